"""Image input: decode, center-crop, resize, map to [-1, 1], flip doubling.

One place defines how a raw picture becomes a training or encoding input, so
the dataset builders (build time), `encode_latents` (encode time) and the
pixel-mode `images` source (train time) cannot drift apart:

* decode with PIL to RGB uint8 (grayscale, palette, CMYK and alpha images are
  converted; a file PIL cannot decode is corrupt: skipped and counted);
* crop the centred square of side min(H, W), then resize it to the target side
  with PIL's bicubic filter, which is antialiased when downscaling (Parmar et
  al. 2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation",
  arXiv 2104.11222); images smaller than the target are refused, never
  upsampled;
* map uint8 to [-1, 1] as the reference's ToTensor + Normalize(0.5, 0.5)
  (ALGORITHM.md section 10);
* flip doubling (`data.flip_double`): index i < N is image i, index N + i is its
  horizontal mirror, as the paper's LSUN set of images plus their mirrors.

Reading is random access (a tfds split built as ArrayRecord), so the batch of
any step can be read directly by the process that consumes it.
"""

import concurrent.futures
import dataclasses
import os
from typing import Any, Sequence

import ml_collections
import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Exceptions PIL raises for files that are not (complete) images.
_DECODE_ERRORS = (
  OSError,
  SyntaxError,
  ValueError,
  Image.DecompressionBombError,
)
_READ_THREADS = 8  # PIL decoding releases the GIL: decode a batch in threads.


def list_images(folder: str) -> list[str]:
  """Image files under `folder` (recursive), as sorted relative paths."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in files:
      if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
        found.append(os.path.relpath(os.path.join(root, name), folder))
  return sorted(found)


def read_size(path: str) -> tuple[int, int] | None:
  """(width, height) from the file header, or None if it is not an image."""
  try:
    with Image.open(path) as im:
      return im.size
  except _DECODE_ERRORS:
    return None


def load_image(path: str) -> np.ndarray | None:
  """Decodes a file to RGB uint8 [H, W, 3]; None if it is corrupt."""
  try:
    with Image.open(path) as im:
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
  """uint8 -> float32 in [-1, 1]: (x / 255 - 0.5) / 0.5 (ALGORITHM 10)."""
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
    wh = read_size(os.path.join(folder, rel))
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


class ImageArray:
  """A lazy [N, S, S, 3] float32 array over a random-access image split.

  `array[indices]` decodes and preprocesses just those rows (in threads), so
  a process reads only the images it consumes. With `flip_double` the array
  has 2N rows: N + i is the mirror of row i.
  """

  def __init__(self, source: Sequence[Any], size: int, flip_double: bool):
    self.source, self.size = source, size
    self.base = len(source)
    self.flip_double = flip_double
    n = self.base * (2 if flip_double else 1)
    self.shape = (n, size, size, 3)
    self._pool = concurrent.futures.ThreadPoolExecutor(_READ_THREADS)

  def __len__(self) -> int:
    return self.shape[0]

  def _one(self, index: int, flip: bool) -> np.ndarray:
    example = self.source[int(index)]
    image = example["image"] if isinstance(example, dict) else example
    try:
      return preprocess(image, self.size, flip)
    except ValueError as e:
      raise ValueError(f"example {int(index)} of the image split: {e}") from e

  def __getitem__(self, indices) -> np.ndarray:
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"image index out of range [0, {len(self)})")
    base, flip = flip_index(indices, self.base)
    rows = self._pool.map(self._one, base.tolist(), flip.tolist())
    out = np.empty((len(indices), *self.shape[1:]), np.float32)
    for i, row in enumerate(rows):
      out[i] = row
    return out


def get_builder(name: str, data_dir: str = ""):
  """tfds.builder(name) with our builders registered and a one-line error."""
  import tensorflow_datasets as tfds  # Lazy: pulls in TensorFlow pieces.

  from ilct_jax import datasets  # noqa: F401 - registers our builders.

  try:
    return tfds.builder(name, data_dir=data_dir or None)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
    first = str(e).strip().splitlines()[0]
    raise ValueError(
      f"{name!r} is not a known tfds dataset/config ({first}); use e.g. "
      "celeb_a_hq_folder/256, ffhq_folder/256, local_image_folder/256 or "
      "lsun/church_outdoor"
    ) from e


def open_split(name: str, split: str, data_dir: str = "") -> Sequence[Any]:
  """A built tfds image split as a random-access data source.

  Args:
    name: tfds name, e.g. "celeb_a_hq_folder/256" or "lsun/church_outdoor".
    split: split name or slice ("train", "train[:1000]").
    data_dir: tfds data_dir ('' = tfds default).

  Returns:
    A sequence of examples (dicts with a uint8 "image").
  """
  builder = get_builder(name, data_dir)
  try:
    return builder.as_data_source(split=split)
  except (AssertionError, FileNotFoundError, NotImplementedError) as e:
    if not builder.is_prepared():
      raise FileNotFoundError(
        f"tfds dataset {name!r} is not built in {builder.data_dir_root!r}; "
        f"build it with `python -m ilct_jax.datasets.build --dataset={name} "
        "--manual_dir=FOLDER` (see docs/DATA.md)"
      ) from e
    if not isinstance(e, NotImplementedError):
      raise
    raise ValueError(
      f"tfds dataset {name!r} is not stored as ArrayRecord (random access); "
      "rebuild it with `python -m ilct_jax.datasets.build` or run `tfds "
      "convert_format --out_file_format=array_record` on it"
    ) from e


def corrupt_count(name: str, data_dir: str = "") -> int | None:
  """Corrupt files skipped when the builder ran (None: not recorded)."""
  try:
    meta = get_builder(name, data_dir).info.metadata
  except Exception:  # noqa: BLE001 - metadata is informational only.
    return None
  if not meta or "corrupt" not in meta:
    return None
  return int(sum(meta["corrupt"].values()))


def make_array(config: ml_collections.ConfigDict, size: int) -> ImageArray:
  """The configured image split (data.name/split/data_dir) at side `size`."""
  d = config.data
  source = open_split(d.name, d.split, d.data_dir)
  if len(source) == 0:
    raise ValueError(
      f"tfds split {d.name}:{d.split} is empty; check data.split and rebuild "
      "the dataset from a folder that holds images"
    )
  return ImageArray(source, size, d.flip_double)


def make_source(config: ml_collections.ConfigDict):
  """Pixel-mode training source (`data.source = "images"`)."""
  from ilct_jax import input_pipeline

  if config.data.channels != 3:
    raise ValueError(
      f"data.source='images' gives RGB examples but data.channels="
      f"{config.data.channels}; set data.channels=3"
    )
  array = make_array(config, config.data.image_size)
  return input_pipeline.ArraySource(array, config.train.batch_size, config.seed)
