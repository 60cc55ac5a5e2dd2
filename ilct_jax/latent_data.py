"""The encoded-latent dataset: its on-disk format and the training source.

`encode_latents` writes, into one directory (`data.latent_dir`):

  latents-<split>-<j>-of-<J>.array_record  chunk j: one record per example,
                                            the raw float32 bytes of a
                                            stored latent [h, w, c] (NHWC,
                                            `posterior.sample() * 0.18215`,
                                            ALGORITHM.md section 10)
  latents-<split>-<j>-of-<J>.moments.npz   chunk j's count/mean/M2 (float64)
  plan.json                                 what is being encoded (written
                                            first; a rerun resumes only if
                                            it matches)
  stats.npz                                 per-element mean/std (latents.py)
  manifest.json                             written LAST: the dataset is
                                            finished iff this exists

Example i of the dataset is record i of the concatenated chunks, so any row
can be read by random access: each process reads only the rows of the global
batch it consumes (input_pipeline.ArraySource decides which), and the batch of
step k is a pure function of (seed, k).
"""

import functools
import hashlib
import json
import os
from typing import Any

import ml_collections
import numpy as np

from ilct_jax import latents

FORMAT = "ilct_jax.latents/1"
MANIFEST = "manifest.json"
PLAN = "plan.json"
STATS = "stats.npz"


def shard_name(split: str, index: int, count: int) -> str:
  """File name of chunk `index` of `count` (without the directory)."""
  return f"latents-{split}-{index:05d}-of-{count:05d}.array_record"


def moments_name(shard: str) -> str:
  """The per-chunk moments file beside `shard`."""
  return shard.replace(".array_record", ".moments.npz")


def _file_key(path: str) -> tuple:
  st = os.stat(path)
  return (st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str, key: tuple) -> str:
  del key  # Only part of the cache key: a rewritten file is hashed again.
  from ilct_jax.models import vae as vae_lib

  with open(os.path.join(path, vae_lib.CONFIG_FILE)) as f:
    config = json.load(f)
  digest = hashlib.sha256()
  arch = {k: config[k] for k in vae_lib.ARCH_FIELDS}
  digest.update(json.dumps(arch, sort_keys=True).encode())
  with np.load(os.path.join(path, vae_lib.PARAMS_FILE)) as params:
    for name in sorted(params.files):
      value = np.ascontiguousarray(params[name], np.float32)
      digest.update(f"{name}:{value.shape}".encode())
      digest.update(value.tobytes())
  return "sha256:" + digest.hexdigest()


def vae_fingerprint(path: str) -> str:
  """A hash of a VAE checkpoint's architecture and parameter values.

  Hashes the arrays, not the .npz bytes, so the same weights saved twice
  (zip timestamps differ) have the same fingerprint.
  """
  from ilct_jax.models import vae as vae_lib

  params = os.path.join(path, vae_lib.PARAMS_FILE)
  if not os.path.isfile(params):
    raise FileNotFoundError(
      f"no {vae_lib.PARAMS_FILE} in VAE checkpoint directory {path!r}; set "
      "vae.path to a directory written by `python -m ilct_jax.convert_vae`"
    )
  return _fingerprint(os.path.abspath(path), _file_key(params))


def stats_path(config: ml_collections.ConfigDict) -> str:
  """data.stats_path, or <data.latent_dir>/stats.npz when it is empty."""
  d = config.data
  if d.stats_path:
    return d.stats_path
  return os.path.join(d.latent_dir, STATS) if d.latent_dir else ""


def read_manifest(latent_dir: str) -> dict[str, Any]:
  """The manifest of a finished latent dataset (one-line errors otherwise)."""
  if not latent_dir:
    raise ValueError(
      "data.latent_dir is empty; set it to the directory written by "
      "`python -m ilct_jax.encode_latents`"
    )
  path = os.path.join(latent_dir, MANIFEST)
  if not os.path.isfile(path):
    partial = os.path.isfile(os.path.join(latent_dir, PLAN))
    state = "is unfinished" if partial else "has no latent dataset"
    raise FileNotFoundError(
      f"{latent_dir} {state} (no {MANIFEST}); run `python -m "
      "ilct_jax.encode_latents --config=... --workdir=" + latent_dir + "` "
      "(a rerun resumes where it stopped)"
    )
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT or not manifest.get("complete"):
    raise ValueError(
      f"{path} is not a finished {FORMAT} manifest; re-run encode_latents "
      "with --overwrite"
    )
  return manifest


def check_manifest(manifest: dict, config: ml_collections.ConfigDict) -> None:
  """The dataset matches the config: split, flip doubling and the VAE."""
  d = config.data
  where = d.latent_dir
  if manifest["split"] != d.split:
    raise ValueError(
      f"{where} holds split {manifest['split']!r} but data.split="
      f"{d.split!r}; encode that split or fix data.split"
    )
  flipped = bool(manifest["source"]["flip_double"])
  if flipped != bool(d.flip_double):
    raise ValueError(
      f"{where} was encoded with flip_double={flipped} but "
      f"data.flip_double={d.flip_double}; make them agree or re-encode"
    )
  if config.vae.path:
    mine = vae_fingerprint(config.vae.path)
    theirs = manifest["vae"]["fingerprint"]
    if mine != theirs:
      raise ValueError(
        f"{where} was encoded with another VAE ({theirs[:19]}, from "
        f"{manifest['vae']['path']}) than vae.path={config.vae.path} "
        f"({mine[:19]}); point vae.path at that VAE or re-encode with "
        "encode_latents --overwrite"
      )


class _Records:
  """Random access to the records of several ArrayRecord files, in order.

  ArrayRecordDataSource starts a thread pool on every call; one reader per
  file, read in the caller's thread, served 255 vs 130 reads/s of 128 random
  latents (32x32x4) on the 2-core test machine.
  """

  def __init__(self, files: list[str]):
    from array_record.python import array_record_module

    self._open = lambda path: array_record_module.ArrayRecordReader(
      path, "readahead_buffer_size:0"
    )
    self._files = files
    self._readers = [self._open(f) for f in files]
    counts = [r.num_records() for r in self._readers]
    self.ends = np.cumsum(counts)
    self.starts = self.ends - counts

  def __len__(self) -> int:
    return int(self.ends[-1]) if len(self.ends) else 0

  def read(self, keys: np.ndarray) -> list[bytes]:
    """The records at global positions `keys`, in the order given."""
    keys = np.asarray(keys, np.int64)
    which = np.searchsorted(self.ends, keys, side="right")
    out: list[bytes] = [b""] * len(keys)
    for f in np.unique(which):
      rows = np.flatnonzero(which == f)
      positions = (keys[rows] - self.starts[f]).tolist()
      for row, record in zip(rows, self._readers[f].read(positions)):
        out[row] = record
    return out


class LatentArray:
  """A lazy [N, h, w, c] array of normalized latents over the chunk files.

  `array[indices]` reads just those records (random access) and returns
  float32 x0 = 0.5 * (stored / 0.18215 - mean) / std (latents.normalize).
  """

  def __init__(self, files: list[str], shape, mean, std):
    self._records = _Records(files)
    self.example_shape = tuple(shape)
    self.shape = (len(self._records), *self.example_shape)
    self._mean, self._std = mean, std
    self._bytes = int(np.prod(self.example_shape)) * 4

  def __len__(self) -> int:
    return self.shape[0]

  def stored(self, indices) -> np.ndarray:
    """The stored (scaled, un-normalized) latents at `indices`."""
    keys = np.asarray(indices, np.int64).reshape(-1)
    if keys.size and (keys.min() < 0 or keys.max() >= len(self)):
      raise IndexError(f"latent index out of range [0, {len(self)})")
    records = self._records.read(keys)
    bad = [k for k, r in zip(keys, records) if len(r) != self._bytes]
    if bad:
      raise ValueError(
        f"latent record {bad[0]} has {len(records[list(keys).index(bad[0])])}"
        f" bytes, expected {self._bytes}; the dataset is damaged: re-encode "
        "with --overwrite"
      )
    flat = np.frombuffer(b"".join(records), "<f4")  # A read-only view.
    return flat.reshape(len(keys), *self.example_shape)

  def __getitem__(self, indices) -> np.ndarray:
    x = latents.normalize(self.stored(indices), self._mean, self._std)
    return x.astype(np.float32, copy=False)


def open_latents(config: ml_collections.ConfigDict) -> LatentArray:
  """The configured finished dataset, checked against config and stats."""
  d = config.data
  manifest = read_manifest(d.latent_dir)
  check_manifest(manifest, config)
  shape = tuple(manifest["shape"])
  files = [os.path.join(d.latent_dir, f) for f in manifest["files"]]
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(
      f"{len(missing)} latent file(s) listed in the manifest are missing "
      f"(e.g. {missing[0]}); re-encode with encode_latents --overwrite"
    )
  mean, std = latents.load_stats(stats_path(config), shape)
  array = LatentArray(files, shape, mean, std)
  if len(array) != manifest["num_examples"]:
    raise ValueError(
      f"{d.latent_dir} holds {len(array)} latents but its manifest says "
      f"{manifest['num_examples']}; re-encode with encode_latents --overwrite"
    )
  return array


def make_source(config: ml_collections.ConfigDict):
  """The `latents` training source (see input_pipeline.ArraySource).

  Returns:
    An object with `num_examples`, `example_shape` and `local_batch(step,
    process_index, process_count)` giving normalized float32 latents.
  """
  from ilct_jax import input_pipeline

  array = open_latents(config)
  return input_pipeline.ArraySource(array, config.train.batch_size, config.seed)
