"""Training input: per-process batches assembled into global sharded arrays.

The contract every source follows: the global batch of step k is a pure
function of (seed, k), so a resumed run sees exactly the batches the
uninterrupted run would have seen. Each process produces only its slice of the
global batch (process p takes rows [p*B/P, (p+1)*B/P)) and
`jax.make_array_from_process_local_data` assembles the global array sharded on
the mesh axis "data".

Sources (`data.source`):
  digits   the UCI handwritten digits shipped in ilct_jax/data (pixel mode,
           the built-in demo, data/digits.py), upsampled to
           data.image_size, in [-1, 1].
  latents  SD-VAE latents written by `ilct_jax.data.encode`, normalized with
           their per-element statistics (data/latents.py).
  images   a tfds image split (data.name), center-cropped and resized to
           data.image_size, in [-1, 1] (pixel mode, data/tfds_images.py).
All three are random-access arrays read through `ArraySource`.

Class-conditional runs (model.num_classes > 0) get (x, labels) batches: the
digits' own labels, or the labels the encoder stored with the latents
(data.labels); the labels are split over "data" as the examples are.
"""

import queue
import threading

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ilct_jax import choices, parallel
from ilct_jax.data import digits, latents, tfds_images

SOURCES = ("digits", "latents", "images")


class ArraySource:
  """An in-memory dataset whose batch for step k depends only on (seed, k).

  Each epoch is a fresh permutation drawn from (seed, epoch); the last partial
  batch of an epoch is dropped, as the reference's DataLoader(drop_last=True).
  """

  def __init__(
    self, data: np.ndarray, global_batch: int, seed: int, labelled=False
  ):
    if global_batch > data.shape[0]:
      raise ValueError(
        f"train.batch_size={global_batch} exceeds the {data.shape[0]} "
        "examples of the dataset; lower train.batch_size"
      )
    self.data = data
    self.labelled = labelled  # Batches are (x, labels): data.labelled(rows).
    self.global_batch = global_batch
    self.seed = seed
    self.steps_per_epoch = data.shape[0] // global_batch
    self.num_examples = data.shape[0]
    self.example_shape = data.shape[1:]
    self._perm_epoch, self._perm = -1, None

  def _order(self, epoch: int) -> np.ndarray:
    if epoch != self._perm_epoch:
      rng = np.random.default_rng([self.seed, epoch])
      self._perm, self._perm_epoch = rng.permutation(self.data.shape[0]), epoch
    return self._perm

  def local_batch(self, step: int, index: int, count: int) -> np.ndarray:
    """Rows of global batch `step` that belong to process `index` of `count`."""
    epoch, pos = divmod(step, self.steps_per_epoch)
    rows = self._order(epoch)[
      pos * self.global_batch : (pos + 1) * self.global_batch
    ]
    per = self.global_batch // count
    mine = rows[index * per : (index + 1) * per]
    return self.data.labelled(mine) if self.labelled else self.data[mine]


class LabelledArray:
  """An in-memory array with one class label per row (the digits)."""

  def __init__(self, data: np.ndarray, labels: np.ndarray):
    self.data, self.labels = data, np.asarray(labels, np.int32)
    self.shape = data.shape

  def __getitem__(self, rows) -> np.ndarray:
    return self.data[rows]

  def labelled(self, rows) -> tuple[np.ndarray, np.ndarray]:
    return self.data[rows], self.labels[rows]


def _labels_checked(config: ml_collections.ConfigDict, array) -> None:
  """A class-conditional run's data has labels below model.num_classes."""
  labels = getattr(array, "labels", None)
  where = config.data.latent_dir or config.data.source
  if labels is None:
    raise ValueError(
      f"model.num_classes={config.model.num_classes} but {where} has no "
      "class labels; encode the latents with --config.data.labels=label "
      "(a labelled tfds set) or =folder (class folders), or set "
      "model.num_classes=0"
    )
  if labels.size and int(labels.max()) >= config.model.num_classes:
    raise ValueError(
      f"{where} has labels up to {int(labels.max())} but model.num_classes="
      f"{config.model.num_classes}; set model.num_classes="
      f"{int(labels.max()) + 1}"
    )


def _source(config: ml_collections.ConfigDict) -> ArraySource:
  """The configured source as an ArraySource over a random-access array."""
  d = config.data
  choices.check("data.source", d.source, SOURCES)
  labelled = config.model.get("num_classes", 0) > 0
  if d.source == "digits":
    array = digits.load_digits(d.image_size)
    if labelled:
      array = LabelledArray(array, digits.load_labels())
  elif d.source == "latents":
    array = latents.open_latents(config)
  else:
    if labelled:
      raise ValueError(
        "class labels come with the digits and latents sources; encode the "
        "images with ilct_jax.data.encode --config.data.labels=label|folder "
        "and train on data.source=latents"
      )
    if d.channels != 3:
      raise ValueError(
        f"data.source='images' gives RGB examples but data.channels="
        f"{d.channels}; set data.channels=3"
      )
    array = tfds_images.make_array(config, d.image_size)
  if labelled:
    _labels_checked(config, array)
  src = ArraySource(array, config.train.batch_size, config.seed, labelled)
  expected = (d.image_size, d.image_size, d.channels)
  if tuple(src.example_shape) != expected:
    raise ValueError(
      f"dataset examples have shape {tuple(src.example_shape)} but the config "
      f"says {expected}; fix data.image_size / data.channels"
    )
  return src


def num_examples(config: ml_collections.ConfigDict) -> int:
  """Dataset size (data.num_examples if set, else read from the dataset)."""
  if config.data.num_examples > 0:
    return int(config.data.num_examples)
  return int(_source(config).num_examples)


def create_iterator(
  config: ml_collections.ConfigDict, mesh: Mesh, *, start_step: int
) -> "_Prefetcher":
  """Yields global [B, H, W, C] arrays sharded on "data", from `start_step`
  (with their [B] labels as a pair for a class-conditional model)."""
  src = _source(config)
  sharding = parallel.batch_sharding(mesh)
  index, count = jax.process_index(), jax.process_count()

  def produce(step: int) -> jax.Array | tuple[jax.Array, jax.Array]:
    local = src.local_batch(step, index, count)
    return jax.tree.map(
      lambda a: jax.make_array_from_process_local_data(sharding, a), local
    )

  prefetcher = _Prefetcher(produce, start_step, max(config.data.prefetch, 1))
  prefetcher.skipped = lambda: int(getattr(src.data, "skipped", 0))
  return prefetcher


class _Prefetcher:
  """Runs `produce(step)` for consecutive steps in a background thread.

  `close()` stops and joins the thread; the loop calls it on exit so that no
  device transfer is in flight while the interpreter shuts down. `skipped()`
  counts the bad latent records this process replaced so far
  (data.bad_records=skip; read ahead by the prefetch depth).
  """

  def __init__(self, produce, start: int, depth: int):
    self._produce, self._step = produce, start
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self.skipped = lambda: 0
    self._thread = threading.Thread(target=self._work, daemon=True)
    self._thread.start()

  def _work(self) -> None:
    while not self._stop.is_set():
      try:
        item = self._produce(self._step)
      except Exception as e:  # noqa: BLE001 - re-raised in the consumer.
        item = e
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if isinstance(item, Exception):
        return
      self._step += 1

  def __iter__(self) -> "_Prefetcher":
    return self

  def __next__(self) -> jax.Array:
    item = self._queue.get()
    if isinstance(item, Exception):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    self._thread.join()
