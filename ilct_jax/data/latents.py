"""Encoded SD-VAE latents: normalization, statistics and the on-disk format.

Normalization (ALGORITHM.md §10): stored latents are
`posterior.sample() * 0.18215`. The reference (`--normalize-matrix`) divides
by 0.18215, subtracts a PER-ELEMENT mean and divides by a per-element std
(both [32, 32, 4] in NHWC, over the whole training set, std unbiased), then
scales by 0.5 so the data std is sigma_data = 0.5:
x0 = 0.5 * (stored / 0.18215 - mean) / std. Its inverse gives the unscaled
latent that `vae.decode` takes: z = x0 * std / 0.5 + mean (no second division
by 0.18215). Statistics are stored as `.npz` with arrays `mean` and `std`
(never pickle).

On-disk format: the encoding job (`ilct_jax.data.encode`) writes, into one
directory (`data.latent_dir`):

  latents-<split>-<j>-of-<J>.array_record  chunk j: one record per example,
                                            the raw float32 bytes of a
                                            stored latent [h, w, c] (NHWC)
  latents-<split>-<j>-of-<J>.moments.npz   chunk j's count/mean/M2 (float64)
  plan.json                                 what is being encoded (written
                                            first; a rerun resumes only if
                                            it matches)
  stats.npz                                 per-element mean/std
  labels.npz                                (labelled sets only) `labels`
                                            int32 [N] and `class_names`
                                            (the class folders, or empty)
  manifest.json                             written LAST: the dataset is
                                            finished iff this exists

Example i of the dataset is record i of the concatenated chunks, so any row
can be read by random access: each process reads only the rows of the global
batch it consumes (data/pipeline.py decides which), and the batch of step k is
a pure function of (seed, k).
"""

import functools
import hashlib
import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ilct_jax import choices, faults, storage
from ilct_jax.data import latent_labels
from ilct_jax.models import vae as vae_lib
from ilct_jax.models import vae_files
from ilct_jax.models.autoencoder import SCALING_FACTOR

FORMAT = "ilct_jax.latents/1"
MANIFEST = "manifest.json"
PLAN = "plan.json"
STATS = "stats.npz"
BAD_RECORDS = ("error", "skip")  # data.bad_records


def normalize(stored, mean, std, sigma_data: float):
  """Stored (scaled) latents -> x0 with per-element std sigma_data (0.5).

  The target std is the consistency parametrization's sigma_data
  (`ct.sigma_data`, ALGORITHM.md §1, §10), so the two cannot disagree.
  """
  return sigma_data * (stored / SCALING_FACTOR - mean) / std


def denormalize(x0, mean, std, sigma_data: float):
  """Training-space x0 -> the unscaled latent z that the VAE decoder takes."""
  return x0 * std / sigma_data + mean


def to_stored(x0, mean, std, sigma_data: float):
  """Training-space x0 -> stored (scaled) latents; inverse of normalize."""
  return denormalize(x0, mean, std, sigma_data) * SCALING_FACTOR


def compute_stats(unscaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-element mean and unbiased std over axis 0 of unscaled latents.

  Args:
    unscaled: [N, H, W, C] latents already divided by SCALING_FACTOR.

  Returns:
    (mean, std), each float32 [H, W, C] (float64 accumulation).
  """
  x = np.asarray(unscaled, np.float64)
  if x.shape[0] < 2:
    raise ValueError("latent statistics need at least 2 latents")
  return (
    x.mean(axis=0).astype(np.float32),
    x.std(axis=0, ddof=1).astype(np.float32),
  )


def save_stats(path: str, mean: np.ndarray, std: np.ndarray) -> None:
  """Writes mean/std to an `.npz` (atomically)."""
  storage.save_npz(
    path, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32)
  )


def load_stats(
  path: str, shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Reads mean/std and checks them against the latent shape [H, W, C]."""
  fix = "run `python -m ilct_jax.data.encode` or set data.stats_path"
  if not path:
    raise FileNotFoundError(f"latent statistics path is empty; {fix}")
  f = storage.load_npz(path, "latent statistics", fix, keys=("mean", "std"))
  mean, std = f["mean"].astype(np.float32), f["std"].astype(np.float32)
  if mean.shape != std.shape or (shape is not None and mean.shape != shape):
    raise ValueError(
      f"stats file {path} has mean {mean.shape} / std {std.shape} but the "
      f"latents are {shape}; use the stats made for this dataset and VAE"
    )
  if not np.all(std > 0):
    raise ValueError(f"stats file {path} has non-positive std entries")
  return mean, std


def as_jnp(mean: np.ndarray, std: np.ndarray):
  """Stats as float32 device arrays."""
  return jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)


def shard_name(split: str, index: int, count: int) -> str:
  """File name of chunk `index` of `count` (without the directory)."""
  return f"latents-{split}-{index:05d}-of-{count:05d}.array_record"


def moments_name(shard: str) -> str:
  """The per-chunk moments file beside `shard`."""
  return shard.replace(".array_record", ".moments.npz")


def _file_key(path: str) -> tuple:
  st = storage.path(path).stat()
  return (st.length, st.mtime)


@functools.lru_cache(maxsize=8)
def _fingerprint(path: str, key: tuple) -> str:
  del key  # Only part of the cache key: a rewritten file is hashed again.
  config, params = vae_files.read_checkpoint(path)
  digest = hashlib.sha256()
  arch = {k: config[k] for k in vae_lib.ARCH_FIELDS}
  digest.update(json.dumps(arch, sort_keys=True).encode())
  for name in sorted(params):
    value = np.ascontiguousarray(params[name], np.float32)
    digest.update(f"{name}:{value.shape}".encode())
    digest.update(value.tobytes())
  return "sha256:" + digest.hexdigest()


def vae_fingerprint(path: str) -> str:
  """A hash of a VAE checkpoint's architecture and parameter values.

  Hashes the arrays, not the .npz bytes, so the same weights saved twice
  (zip timestamps differ) have the same fingerprint.
  """
  params = storage.join(path, vae_files.PARAMS_FILE)
  if not storage.isfile(params):
    raise FileNotFoundError(
      f"no {vae_files.PARAMS_FILE} in VAE checkpoint directory {path!r}; set "
      "vae.path to a directory written by `python -m "
      "ilct_jax.models.convert_vae`"
    )
  return _fingerprint(os.fspath(storage.path(path)), _file_key(params))


def stats_path(config: ml_collections.ConfigDict) -> str:
  """data.stats_path, or <data.latent_dir>/stats.npz when it is empty."""
  d = config.data
  if d.stats_path:
    return d.stats_path
  return storage.join(d.latent_dir, STATS) if d.latent_dir else ""


def read_manifest(latent_dir: str) -> dict[str, Any]:
  """The manifest of a finished latent dataset (one-line errors otherwise)."""
  if not latent_dir:
    raise ValueError(
      "data.latent_dir is empty; set it to the directory written by "
      "`python -m ilct_jax.data.encode`"
    )
  path = storage.join(latent_dir, MANIFEST)
  if not storage.isfile(path):
    partial = storage.isfile(storage.join(latent_dir, PLAN))
    state = "is unfinished" if partial else "has no latent dataset"
    raise FileNotFoundError(
      f"{latent_dir} {state} (no {MANIFEST}); run `python -m "
      "ilct_jax.data.encode --config=... --workdir=" + latent_dir + "` "
      "(a rerun resumes where it stopped)"
    )
  manifest = storage.read_json(
    path, "latent manifest", "re-run ilct_jax.data.encode with --overwrite"
  )
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    manifest = {}
  if not manifest.get("complete"):
    raise ValueError(
      f"{path} is not a finished {FORMAT} manifest; re-run "
      "ilct_jax.data.encode with --overwrite"
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
        "ilct_jax.data.encode --overwrite"
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

  def where(self, key: int) -> tuple[str, int]:
    """(file, record within it) of global record `key`."""
    f = int(np.searchsorted(self.ends, key, side="right"))
    return self._files[f], int(key - self.starts[f])

  def read(self, keys: np.ndarray) -> list[bytes | None]:
    """The records at global positions `keys`, in the order given; None
    for a record whose chunk fails ArrayRecord's checks (hash mismatch)."""
    keys = np.asarray(keys, np.int64)
    which = np.searchsorted(self.ends, keys, side="right")
    out: list[bytes | None] = [b""] * len(keys)
    for f in np.unique(which):
      rows = np.flatnonzero(which == f)
      positions = (keys[rows] - self.starts[f]).tolist()
      try:
        records = self._readers[f].read(positions)
      except RuntimeError:  # A damaged chunk: find which records.
        records = [self._read_one(f, p) for p in positions]
      for row, record in zip(rows, records):
        out[row] = record
    return out

  def _read_one(self, f: int, position: int) -> bytes | None:
    try:
      return self._readers[f].read([position])[0]
    except RuntimeError:
      return None


class LatentArray:
  """A lazy [N, h, w, c] array of normalized latents over the chunk files.

  `array[indices]` reads just those records (random access) and returns
  float32 x0 = 0.5 * (stored / 0.18215 - mean) / std (`normalize`).

  Every record read is checked before it reaches a batch: its chunk passes
  ArrayRecord's hashes, it has the bytes of one latent, and its values are
  finite. A bad record raises `faults.BadRecordError` naming the file and the
  record (`bad_records="error"`), or is replaced by the next good record of
  the dataset (deterministic, so a resumed run reads the same batch) and
  counted in `skipped` (`bad_records="skip"`).
  """

  def __init__(
    self,
    files: list[str],
    shape,
    mean,
    std,
    sigma_data: float,
    bad_records: str = "error",
    labels: np.ndarray | None = None,
  ):
    choices.check("data.bad_records", bad_records, BAD_RECORDS)
    self.labels = labels
    self._records = _Records(files)
    self.example_shape = tuple(shape)
    self.shape = (len(self._records), *self.example_shape)
    self._mean, self._std, self._sigma_data = mean, std, sigma_data
    self._bytes = int(np.prod(self.example_shape)) * 4
    self.policy, self.skipped = bad_records, 0
    self._warned: set[int] = set()

  def __len__(self) -> int:
    return self.shape[0]

  def _why_bad(self, record: bytes | None) -> str | None:
    if record is None:
      return "its chunk fails ArrayRecord's hash check"
    if len(record) != self._bytes:
      return f"it has {len(record)} bytes, a latent has {self._bytes}"
    if not np.isfinite(np.frombuffer(record, "<f4")).all():
      return "it holds NaN or inf values"
    return None

  def _bad(self, key: int, why: str) -> str:
    path, record = self._records.where(key)
    return (
      f"bad latent record {record} of {path} (example {key}): {why}; "
      "re-encode the dataset with ilct_jax.data.encode --overwrite, or set "
      "data.bad_records=skip to train without it"
    )

  def _replacement(self, key: int) -> tuple[bytes, int]:
    """The next good record after `key` (wrapping) and its key, counted as
    a skip."""
    self.skipped += 1
    for step in range(1, len(self)):
      other = (key + step) % len(self)
      record = self._records.read(np.array([other]))[0]
      if self._why_bad(record) is None:
        return record, other
    raise faults.BadRecordError(f"no good record in {len(self)} latents")

  def stored(self, indices) -> np.ndarray:
    """The stored (scaled, un-normalized) latents at `indices`."""
    return self._stored(indices)[0]

  def _stored(self, indices) -> tuple[np.ndarray, np.ndarray]:
    keys = np.array(indices, np.int64).reshape(-1)
    if keys.size and (keys.min() < 0 or keys.max() >= len(self)):
      raise IndexError(f"latent index out of range [0, {len(self)})")
    records = self._records.read(keys)
    for i, (key, record) in enumerate(zip(keys.tolist(), records)):
      why = self._why_bad(record)
      if why is None:
        continue
      if self.policy == "error":
        raise faults.BadRecordError(self._bad(key, why))
      if key not in self._warned:
        self._warned.add(key)
        logging.warning("skipping %s", self._bad(key, why).split("; ")[0])
      records[i], keys[i] = self._replacement(key)
    flat = np.frombuffer(b"".join(records), "<f4")  # A read-only view.
    return flat.reshape(len(keys), *self.example_shape), keys

  def __getitem__(self, indices) -> np.ndarray:
    return self.labelled(indices)[0]

  def labelled(self, indices) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalized latents at `indices` and their class labels (None for an
    unlabelled set); a skipped bad record's label is its replacement's."""
    stored, keys = self._stored(indices)
    x = normalize(stored, self._mean, self._std, self._sigma_data)
    labels = None if self.labels is None else self.labels[keys]
    return x.astype(np.float32, copy=False), labels


def merge_moments(parts: list[dict]) -> tuple[np.ndarray, np.ndarray, int]:
  """(mean, unbiased std, count) from per-chunk moments (Chan et al. 1979).

  Pairwise update: n = na + nb, mean = ma + d * nb / n,
  M2 = M2a + M2b + d^2 * na * nb / n with d = mb - ma, all in float64.
  """
  count, mean, m2 = 0, None, None
  for p in parts:
    nb, mb, m2b = int(p["count"]), p["mean"], p["m2"]
    if mean is None:
      count, mean, m2 = nb, mb.copy(), m2b.copy()
      continue
    total = count + nb
    delta = mb - mean
    mean = mean + delta * (nb / total)
    m2 = m2 + m2b + delta**2 * (count * nb / total)
    count = total
  std = np.sqrt(m2 / (count - 1))
  return mean.astype(np.float32), std.astype(np.float32), count


def check_stats(path, mean, std, latent_dir: str, shards: list[str]) -> None:
  """The statistics are those of these latents: they must agree with the
  per-chunk moments the encoder wrote beside the records (merged as
  `merge_moments`) to 1e-3 of the std. Datasets without moments
  files (written by hand) are not checked."""
  parts = []
  for shard in shards:
    moments = storage.join(latent_dir, moments_name(shard))
    if not storage.isfile(moments):
      logging.info("No %s: latent stats not checked", moments)
      return
    parts.append(storage.load_npz(moments, "chunk moments", "re-encode"))
  mu, sd, count = merge_moments(parts)
  off_mean = np.abs(mean - mu) / sd
  off_std = np.abs(std / sd - 1)
  worst = max(float(off_mean.max()), float(off_std.max()))
  if worst > 1e-3:
    raise faults.BadRecordError(
      f"stats file {path} disagrees with the latents of {latent_dir}: its "
      f"mean is off by up to {off_mean.max():.3g} std and its std by up to "
      f"{100 * off_std.max():.3g}% of the moments of the {count} latents; "
      "it was made for another dataset or VAE: clear data.stats_path to use "
      f"{latent_dir}/{STATS}, or re-encode with --overwrite"
    )


def open_latents(config: ml_collections.ConfigDict) -> LatentArray:
  """The configured finished dataset, checked against config and stats."""
  d = config.data
  manifest = read_manifest(d.latent_dir)
  check_manifest(manifest, config)
  shape = tuple(manifest["shape"])
  files = [storage.join(d.latent_dir, f) for f in manifest["files"]]
  missing = [f for f in files if not storage.isfile(f)]
  if missing:
    raise FileNotFoundError(
      f"{len(missing)} latent file(s) listed in the manifest are missing "
      f"(e.g. {missing[0]}); re-encode with ilct_jax.data.encode --overwrite"
    )
  # ArrayRecord's reader opens local files only: a remote dataset is copied
  # once to this host's cache ($ILCT_CACHE_DIR, default ~/.cache/ilct_jax).
  if storage.is_remote(d.latent_dir):
    logging.info(
      "Staging %d latent files to %s", len(files), storage.cache_root()
    )
  files = [storage.local_copy(f) for f in files]
  mean, std = load_stats(stats_path(config), shape)
  check_stats(stats_path(config), mean, std, d.latent_dir, manifest["files"])
  array = LatentArray(
    files,
    shape,
    mean,
    std,
    config.ct.sigma_data,
    d.bad_records,
    latent_labels.load_labels(d.latent_dir, manifest),
  )
  if len(array) != manifest["num_examples"]:
    raise ValueError(
      f"{d.latent_dir} holds {len(array)} latents but its manifest says "
      f"{manifest['num_examples']}; re-encode with ilct_jax.data.encode "
      "--overwrite"
    )
  return array
