"""tensorflow-datasets builders for the image sets the paper trained on."""
