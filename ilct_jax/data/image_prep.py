"""Pure image operations: how a raw picture becomes a model input.

One place defines decoding, cropping, resizing and scaling, so the dataset
builders (build time), the latent encoding job (encode time) and the pixel
`images` source (train time) cannot drift apart:

* decode with PIL to RGB uint8 (grayscale, palette, CMYK and alpha images are
  converted; a file PIL cannot decode is corrupt: skipped and counted);
* crop the centred square of side min(H, W), then resize it to the target side
  with PIL's bicubic filter, which is antialiased when downscaling (Parmar et
  al. 2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation",
  arXiv 2104.11222); images smaller than the target are refused, never
  upsampled;
* map uint8 to [-1, 1] as the reference's ToTensor + Normalize(0.5, 0.5)
  (ALGORITHM.md §10);
* flip doubling (`data.flip_double`): index i < N is image i, index N + i is its
  horizontal mirror, as the paper's LSUN set of images plus their mirrors.

Nothing here touches tfds or TensorFlow.
"""

import dataclasses

import numpy as np
from PIL import Image

from ilct_jax import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


# Exceptions PIL raises for files that are not (complete) images.
_DECODE_ERRORS = (
  OSError,
  SyntaxError,
  ValueError,
  Image.DecompressionBombError,
)


def list_images(
  folder: str,
  extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
  recursive: bool = True,
) -> list[str]:
  """Image files under `folder`, as sorted relative paths ("/"-joined).

  Hidden files (".name") are skipped. `recursive=False` lists only the
  folder's own files (pytorch-fid's reference folders); the dataset builders
  walk every subfolder (FFHQ ships in numbered subfolders).
  """
  found = []
  for rel, dirs, files in storage.walk(folder):
    dirs.sort()
    for name in files:
      if name.lower().endswith(extensions) and not name.startswith("."):
        found.append(f"{rel}/{name}" if rel else name)
    if not recursive:
      break
  return sorted(found)


def read_size(path: str) -> tuple[int, int] | None:
  """(width, height) from the file header, or None if it is not an image."""
  try:
    with storage.path(path).open("rb") as f, Image.open(f) as im:
      return im.size
  except _DECODE_ERRORS:
    return None


def load_image(path: str) -> np.ndarray | None:
  """Decodes a file to RGB uint8 [H, W, 3]; None if it is corrupt."""
  try:
    with storage.path(path).open("rb") as f, Image.open(f) as im:
      im.load()  # Decode fully here: truncated files fail now, not later.
      return np.asarray(im.convert("RGB"), np.uint8)
  except _DECODE_ERRORS:
    return None


def as_rgb(image: np.ndarray) -> np.ndarray:
  """[H, W], [H, W, 1], [H, W, 3] or [H, W, 4] uint8 -> [H, W, 3]."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def center_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
  """Centred square crop of side min(H, W), resized to [size, size, 3].

  Args:
    image: uint8 [H, W, C] (any channel count `as_rgb` accepts).
    size: target side in pixels.

  Returns:
    uint8 [size, size, 3].
  """
  image = as_rgb(image)
  h, w = image.shape[:2]
  side = min(h, w)
  if side < size:
    raise ValueError(
      f"image is {w}x{h}, smaller than the target {size}x{size}; remove it "
      "or use a smaller image size (images are never upsampled)"
    )
  top, left = (h - side) // 2, (w - side) // 2
  image = image[top : top + side, left : left + side]
  if side == size:
    return np.ascontiguousarray(image)
  resized = Image.fromarray(image).resize((size, size), Image.BICUBIC)
  return np.asarray(resized, np.uint8)


def to_signed(image: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1]: (x / 255 - 0.5) / 0.5 (ALGORITHM.md §10)."""
  return np.asarray(image, np.float32) / 127.5 - 1.0


def preprocess(image: np.ndarray, size: int, flip: bool = False) -> np.ndarray:
  """uint8 image -> float32 [size, size, 3] in [-1, 1], mirrored if `flip`."""
  out = to_signed(center_crop_resize(image, size))
  return out[:, ::-1] if flip else out


@dataclasses.dataclass
class FolderScan:
  """What a header-only pass over an image folder found.

  Attributes:
    usable: relative paths of images at least `size` on their short side.
    corrupt: relative paths whose header PIL cannot read.
    small: (relative path, (width, height)) of images below the target size.
  """

  usable: list[str]
  corrupt: list[str]
  small: list[tuple[str, tuple[int, int]]]


def scan_folder(folder: str, size: int) -> FolderScan:
  """Reads every image header under `folder` and sorts the files."""
  scan = FolderScan([], [], [])
  for rel in list_images(folder):
    wh = read_size(storage.join(folder, rel))
    if wh is None:
      scan.corrupt.append(rel)
    elif min(wh) < size:
      scan.small.append((rel, wh))
    else:
      scan.usable.append(rel)
  return scan


def flip_index(index: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray]:
  """Doubled index -> (index into the base set, mirrored?)."""
  index = np.asarray(index, np.int64)
  return index % base, index >= base
