"""The built-in demo data: the UCI handwritten digits shipped with the package.

1,797 grayscale 8x8 images with values 0..16 (`digits.npz` beside this file,
CC BY 4.0, see DIGITS_LICENSE.txt; made by tools/make_digits_npz.py). Pixel
mode only: the demo and the tests train on them without an autoencoder.
"""

import os

import jax
import numpy as np

DIGITS_PATH = os.path.join(os.path.dirname(__file__), "digits.npz")
NUM_DIGITS = 1797


def load_digits(image_size: int) -> np.ndarray:
  """UCI digits as float32 [1797, S, S, 1] in [-1, 1] (bilinear upsampling)."""
  with np.load(DIGITS_PATH) as f:
    images = f["images"].astype(np.float32) / 16.0  # Values are 0..16.
  if image_size != 8:
    images = np.asarray(
      jax.image.resize(
        images, (images.shape[0], image_size, image_size), "linear"
      )
    )
  return (images * 2.0 - 1.0)[..., None].astype(np.float32)


def load_labels() -> np.ndarray:
  """The class (0..9) of each digit, int32 [1797]."""
  with np.load(DIGITS_PATH) as f:
    return f["labels"].astype(np.int32)
