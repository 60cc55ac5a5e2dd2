"""The files the lab reads: config files, a run's scalars, arrays of data.

`load_config_file` (a configs/*.py file or a run's config.json),
`read_scalars` (a workdir's TensorBoard scalars, read with tensorboard's
protos through storage.py, so gs:// works and TensorFlow is not needed),
`load_npz` and `load_source` (Fig. 1's data: digits pixels or a dataset's
latents). Shared by analysis.py, inspect_run.py and the notebook.
"""

import importlib.util
import io
import os
import struct
import sys
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from ilct_jax import run_config, storage
from ilct_jax.data import digits, latents


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """A config from a configs/*.py file (its get_config()) or a config.json."""
  if path.endswith(".json"):
    data = storage.read_json(path, "config", "pass a run's config.json")
    return run_config.config_from_dict(data)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} not found")
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:  # Config files import `configs.default`.
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location("_ilct_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _scalar(value: Any) -> float | None:
  """The number of a scalar summary value (v1 simple_value or v2 tensor)."""
  if value.HasField("simple_value"):
    return float(value.simple_value)
  if value.HasField("tensor"):
    arr = tensor_util.make_ndarray(value.tensor)
    if arr.dtype.kind in "fiub" and arr.size == 1:
      return float(arr.reshape(()))
  return None


def _events(path: str) -> Iterator[Any]:
  """Event protos of a TFRecord file via storage.py; a torn tail ends it."""
  with storage.path(path).open("rb") as f:
    while len(header := f.read(12)) == 12:  # length u64, its crc u32
      n = struct.unpack("<Q", header[:8])[0]
      body = f.read(n + 4)  # data, its crc u32
      if len(body) < n + 4:
        return
      yield event_pb2.Event.FromString(body[:n])


def read_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)] by step} of WORKDIR's TensorBoard event files.

  Files are read oldest first, so a step logged again after a resume keeps
  its latest value. Histograms, images and text are skipped.
  """
  by_tag: dict[str, dict[int, float]] = {}
  names = [n for n in storage.listdir(workdir) if "tfevents" in n]
  for name in sorted(names):  # Names start with the creation time.
    for event in _events(storage.join(workdir, name)):
      for v in event.summary.value:
        x = _scalar(v)
        if x is not None:
          by_tag.setdefault(v.tag, {})[int(event.step)] = x
  return {tag: sorted(d.items()) for tag, d in by_tag.items()}


def draw_rows(array: Any, num: int, seed: int) -> np.ndarray:
  """`num` rows of `array` drawn without replacement (all when num = 0)."""
  if not 0 < num < len(array):
    return np.asarray(array[np.arange(len(array))], np.float32)
  rows = np.random.default_rng(seed).choice(len(array), num, replace=False)
  return np.asarray(array[np.sort(rows)], np.float32)


def load_npz(
  path: str, key: str = "", num: int = 0, seed: int = 0
) -> np.ndarray:
  """Array `key` (default: the first) of an .npz file, `num` rows drawn."""
  with np.load(io.BytesIO(storage.read_bytes(path))) as f:
    if key and key not in f.files:
      raise KeyError(f"{path} has no array {key!r}; it has {f.files}")
    return draw_rows(f[key or f.files[0]], num, seed)


def load_source(
  source: str, config: str = "", num: int = 0, seed: int = 0
) -> np.ndarray:
  """Fig. 1 data as float32 [n, ..., C]: "digits" or "latents".

  "digits": the demo's 16x16 pixels in [-1, 1]; "latents": the normalized
  latents of the dataset that `config` (a config file) names, 4096 drawn at
  random unless `num` says otherwise.
  """
  if source == "digits":
    return draw_rows(digits.load_digits(16), num, seed)
  if source != "latents":
    raise ValueError(f"source={source!r} is unknown; choose digits or latents")
  if not config:
    raise ValueError("--source=latents needs --config=FILE of the dataset")
  array = latents.open_latents(load_config_file(config))
  return draw_rows(array, num or 4096, seed)
