"""CelebA-HQ from a manual folder of images ("celeb_a_hq_folder").

tfds' own `celeb_a_hq` needs the original CelebA + delta files and a long
TF1-era recreation step; users of latent models hold the images already
(30,000 JPG/PNG files, 1024 or 256 pixels). The paper trained on 27,000 of
them (ALGORITHM.md §10: "celebhq256 = 27,000"), most likely the common
27k/3k train/validation split: put those in train/ (the rest in validation/)
to reproduce it, or all 30,000 images flat to use everything as "train".
"""

from ilct_jax.data.builders import image_folder


class CelebAHqFolder(image_folder.ImageFolderBuilder):
  """CelebA-HQ images from <manual_dir>/celeb_a_hq (or <manual_dir>)."""

  SUBDIR = "celeb_a_hq"
  TITLE = "CelebA-HQ images"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the CelebA-HQ JPG/PNG images in <manual_dir>/celeb_a_hq (optionally as
  train/ and validation/ subfolders, e.g. the 27k/3k split the paper used),
  then run `python -m ilct_jax.data.build --dataset=celeb_a_hq_folder/256
  --manual_dir=FOLDER`.
  """
