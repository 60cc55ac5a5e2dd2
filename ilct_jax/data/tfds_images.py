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

from ilct_jax import choices
from ilct_jax.data import image_prep

# data.labels: none | label (the tfds 'label' feature, e.g. imagenet2012) |
# folder (the class folder of each file of an image-folder build).
LABEL_KINDS = ("none", "label", "folder")
_READ_THREADS = 8  # PIL decoding releases the GIL: decode a batch in threads.


class ImageArray:
  """A lazy [N, S, S, 3] float32 array over a random-access image split.

  `array[indices]` decodes and preprocesses just those rows (in threads), so
  a process reads only the images it consumes. With `flip_double` the array
  has 2N rows: N + i is the mirror of row i.
  """

  def __init__(
    self,
    source: Sequence[Any],
    size: int,
    flip_double: bool,
    labels: str = "none",
  ):
    choices.check("data.labels", labels, LABEL_KINDS)
    self.source, self.size, self.label_kind = source, size, labels
    self.base = len(source)
    self.flip_double = flip_double
    n = self.base * (2 if flip_double else 1)
    self.shape = (n, size, size, 3)
    self._pool = concurrent.futures.ThreadPoolExecutor(_READ_THREADS)

  def __len__(self) -> int:
    return self.shape[0]

  def _one(self, index: int, flip: bool) -> tuple[np.ndarray, Any]:
    example = self.source[int(index)]
    image = example["image"] if isinstance(example, dict) else example
    try:
      return image_prep.preprocess(image, self.size, flip), self._label(
        example, index
      )
    except ValueError as e:
      raise ValueError(f"example {int(index)} of the image split: {e}") from e

  def _label(self, example: Any, index: int) -> Any:
    """The class of an example: its tfds 'label', or the first folder of
    its 'filename' (a folder-per-class tree); None when not asked."""
    if self.label_kind == "none":
      return None
    key = "label" if self.label_kind == "label" else "filename"
    if not isinstance(example, dict) or key not in example:
      raise ValueError(
        f"data.labels={self.label_kind} reads each example's {key!r}, which "
        f"this split lacks; use data.labels=none (or folder for a folder "
        "of class folders built with ilct_jax.data.build)"
      )
    if key == "label":
      return int(example["label"])
    name = example["filename"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    if "/" not in name:
      raise ValueError(
        f"example {index} ({name}) is not inside a class folder; "
        "data.labels=folder needs FOLDER/<class>/<image> files"
      )
    return name.split("/", 1)[0]

  def __getitem__(self, indices) -> np.ndarray:
    return self.labelled(indices)[0]

  def labelled(self, indices) -> tuple[np.ndarray, np.ndarray | None]:
    """The preprocessed images at `indices` and their labels (ints, class
    folder names, or None under data.labels=none)."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
      raise IndexError(f"image index out of range [0, {len(self)})")
    base, flip = image_prep.flip_index(indices, self.base)
    rows = self._pool.map(self._one, base.tolist(), flip.tolist())
    out = np.empty((len(indices), *self.shape[1:]), np.float32)
    labels = []
    for i, (row, label) in enumerate(rows):
      out[i] = row
      labels.append(label)
    return out, None if self.label_kind == "none" else np.asarray(labels)


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
  return ImageArray(source, size, d.flip_double, d.get("labels", "none"))
