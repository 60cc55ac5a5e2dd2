"""Images from built tfds splits, read by random access (pixel mode, encoding).

`open_split` opens a tfds image split stored as ArrayRecord (built by
`python -m ilct_jax.data.build`), so any example can be read by index
and each process reads only the rows it consumes. `ImageArray` turns such a
split into a lazy [N, S, S, 3] float32 array in [-1, 1] through the pure image
operations of `image_prep` (crop, resize, scale, flip doubling). tfds (and with
it TensorFlow) is imported only inside the functions that need it.
"""

import concurrent.futures
from typing import Any, Sequence

import ml_collections
import numpy as np

from ilct_jax.data import image_prep

_READ_THREADS = 8  # PIL decoding releases the GIL: decode a batch in threads.


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
      return image_prep.preprocess(image, self.size, flip)
    except ValueError as e:
      raise ValueError(f"example {int(index)} of the image split: {e}") from e

  def __getitem__(self, indices) -> np.ndarray:
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"image index out of range [0, {len(self)})")
    base, flip = image_prep.flip_index(indices, self.base)
    rows = self._pool.map(self._one, base.tolist(), flip.tolist())
    out = np.empty((len(indices), *self.shape[1:]), np.float32)
    for i, row in enumerate(rows):
      out[i] = row
    return out


def get_builder(name: str, data_dir: str = ""):
  """tfds.builder(name) with our builders registered and a one-line error."""
  import tensorflow_datasets as tfds  # Lazy: pulls in TensorFlow pieces.

  # Registers our builders; they subclass tfds classes (TensorFlow).
  from ilct_jax.data import builders  # noqa: F401

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
        f"build it with `python -m ilct_jax.data.build --dataset={name} "
        "--manual_dir=FOLDER` (see docs/DATA.md)"
      ) from e
    if not isinstance(e, NotImplementedError):
      raise
    raise ValueError(
      f"tfds dataset {name!r} is not stored as ArrayRecord (random access); "
      "rebuild it with `python -m ilct_jax.data.build` or run `tfds "
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
