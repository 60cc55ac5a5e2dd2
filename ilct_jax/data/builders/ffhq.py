"""FFHQ from a manual folder of images ("ffhq_folder").

FFHQ ships as 70,000 PNGs in numbered subfolders (images1024x1024/00000/...);
the builder walks all subfolders, so point --manual_dir at the folder that
holds them. At size 256 every image is resized from 1024 with an antialiased
bicubic filter (image_prep.py). ALGORITHM.md §10: ffhq = 70,000.
"""

from ilct_jax.data.builders import image_folder


class FfhqFolder(image_folder.ImageFolderBuilder):
  """FFHQ images from <manual_dir>/ffhq (or <manual_dir>)."""

  SUBDIR = "ffhq"
  TITLE = "FFHQ images"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the FFHQ PNGs (e.g. images1024x1024 with its numbered subfolders) in
  <manual_dir>/ffhq, then run `python -m ilct_jax.data.build
  --dataset=ffhq_folder/256 --manual_dir=FOLDER`.
  """
