"""Samples as the FID protocol sees them, and their Inception features.

Batch i of a sampler uses the key fold_in(fold_in(eval stream of eval.seed,
sampler position), i) (rng.py), so the samples do not depend on the device
or process count. A batch goes: x0 = sampler(params, key) -> decode (the SD
VAE, or nothing for pixel runs) -> uint8 by the protocol's rounding -> RGB,
all in one jitted program sharded on "data" (docs/EVAL.md):

  png    the same program continues into InceptionV3: sampling, decoding,
         quantization and features are fused, and nothing crosses to the
         host before the [batch, 2048] features;
  paper  the program stops at uint8 pixels; each process JPEG-encodes its
         rows at quality 75 (PIL, as the authors' sampler), decodes them
         again and computes features of those pixels on its own devices.

With `save_dir`, each process writes its rows as <index>.png / .jpg (the
exact files FID saw). Features of all processes are gathered, in sample
order, on every process.
"""

import concurrent.futures
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ilct_jax import parallel, rng, sampling, storage
from ilct_jax import progress as progress_lib
from ilct_jax import state as state_lib
from ilct_jax.evaluation import features, image_files, write_samples
from ilct_jax.models import convert_inception

PyTree = Any
Config = ml_collections.ConfigDict
_LOG_EVERY_S = 30.0


def _decoder_or_fail(config: Config) -> tuple[write_samples.Decode, Any]:
  parts = write_samples.decoder(config)
  if parts is None:
    raise ValueError(
      "cannot decode samples for FID: set vae.path (python -m "
      "ilct_jax.models.convert_vae)"
    )
  return parts


@functools.lru_cache(maxsize=1)
def _inception(path: str):
  module, variables = convert_inception.load_inception(path)
  return module, variables


def sample_program(
  config: Config,
  sigmas: tuple[float, ...],
  mesh: jax.sharding.Mesh,
  decode: write_samples.Decode,
  inception_module: Any = None,
) -> Callable[..., Any]:
  """The one sampling program: jit(params, aux, key[, inception vars]).

  sampler -> decode(aux, x0) -> uint8 by the protocol's rounding -> RGB,
  and with an `inception_module` on into its pool3 features: returns uint8
  (and [batch, 2048] features), rows sharded on "data". The benchmark's
  eval mode times this same program with random weights.
  """
  model = state_lib.create_model(config, mesh)
  shape = (config.eval.batch_size, *state_lib.example_shape(config))
  proto = image_files.PROTOCOLS[config.eval.protocol]
  rows = parallel.batch_sharding(mesh)

  guide = sampling.guide_of(config)

  def images(params, aux, key):
    labels = sampling.random_labels(
      config, jax.random.fold_in(key, 1), shape[0]
    )
    x0 = sampling.sample(
      model.apply, params, key, shape, sigmas, config.ct, labels, guide
    )
    u8 = image_files.to_uint8(decode(aux, x0), proto.rounding)
    return image_files.to_rgb(u8, jnp)

  if inception_module is None:
    return jax.jit(images, out_shardings=rows)

  def images_and_features(params, aux, key, variables):
    u8 = images(params, aux, key)
    size = config.eval.inception_size
    return u8, features.pool3(inception_module, variables, u8, size)

  return jax.jit(images_and_features, out_shardings=(rows, rows))


@functools.lru_cache(maxsize=8)
def _program(
  frozen: ml_collections.FrozenConfigDict,
  sigmas: tuple[float, ...],
  mesh: jax.sharding.Mesh,
  fused: bool,
) -> Callable[..., Any]:
  """sample_program of a run's own decoder (and Inception when fused)."""
  decode, _ = _decoder_or_fail(frozen)
  module = _inception(frozen.eval.inception_path)[0] if fused else None
  return sample_program(frozen, sigmas, mesh, decode, module)


def _save(rows, index, keep, save_dir, fmt, pool) -> np.ndarray:
  """Saves rows[keep] as <index>.<ext>; returns the pixels FID must see."""

  def one(i: int) -> np.ndarray:
    data, ext = image_files.encode(rows[i], fmt)
    if save_dir:
      storage.write_bytes(storage.join(save_dir, f"{index[i]:06d}.{ext}"), data)
    # PNG is lossless; a JPEG is read back: FID sees what was saved.
    return rows[i] if fmt == "png" else image_files.decode(data)

  out = rows.copy()
  out[keep] = list(pool.map(one, keep))
  return out


def _batches(config, params, sampler, num, save_dir) -> Iterator[tuple]:
  """Yields (local features, their sample indices) batch by batch."""
  ev = config.eval
  proto = image_files.PROTOCOLS[ev.protocol]
  fused = proto.fmt == "png"
  mesh = parallel.make_mesh()
  sigmas = sampling.samplers(config)[sampler]
  program = _program(
    ml_collections.FrozenConfigDict(config), sigmas, mesh, fused
  )
  _, aux = _decoder_or_fail(config)
  base = jax.random.fold_in(
    rng.stream(ev.seed, "eval"), list(sampling.samplers(config)).index(sampler)
  )
  extra = ()
  if fused:
    _, variables = _inception(ev.inception_path)
    extra = (jax.device_put(variables, parallel.replicated(mesh)),)
  feature_fn = (
    None
    if fused
    else features.load_feature_fn(ev.inception_path, ev.inception_size)
  )
  count = -(-num // ev.batch_size)
  run = lambda i: program(params, aux, jax.random.fold_in(base, i), *extra)
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    ahead = run(0)
    for i in range(count):  # Dispatch batch i + 1 before host work on i.
      out, ahead = ahead, (run(i + 1) if i + 1 < count else None)
      u8 = out[0] if fused else out
      local, index = parallel.local_rows(u8)
      index = index + i * ev.batch_size
      keep = np.flatnonzero(index < num)  # Padding of the last batch.
      if fused:
        feats, _ = parallel.local_rows(out[1])
        if save_dir:
          _save(local, index, keep, save_dir, proto.fmt, pool)
      else:
        seen = _save(local, index, keep, save_dir, proto.fmt, pool)
        feats = np.asarray(feature_fn(seen))
      yield np.asarray(feats, np.float32), index


def sample_features(
  config: Config,
  params: PyTree,
  sampler: str,
  num: int,
  save_dir: str | None = None,
) -> np.ndarray:
  """[num, 2048] Inception features of `num` samples, on every process.

  Args:
    config: the run's config (eval.protocol, batch_size, seed, inception).
    params: the parameters to sample with (e.g. one EMA), replicated.
    sampler: a name of `sampling.samplers(config)`.
    num: number of samples.
    save_dir: write the images FID sees there (None: keep nothing).
  """
  if save_dir:
    storage.makedirs(save_dir)
  progress = progress_lib.Progress(
    num, "FID features", "images", _LOG_EVERY_S, all_processes=False
  )
  feats, index = [], []
  for f, i in _batches(config, params, sampler, num, save_dir):
    feats.append(f)
    index.append(i)
    progress.update(int(np.sum(i < num)))
  feats, index = np.concatenate(feats), np.concatenate(index)
  if jax.process_count() > 1:
    feats, index = multihost_utils.process_allgather((feats, index), tiled=True)
  order = np.argsort(index, kind="stable")
  return feats[order[index[order] < num]]


def data_features(config: Config, x0: np.ndarray) -> np.ndarray:
  """Features of data-space examples through the samples' decode/uint8 path.

  The reference for pixel datasets (the digits demo): the same rounding as
  the protocol, never JPEG (the real images were not JPEG files).
  """
  ev = config.eval
  decode, aux = _decoder_or_fail(config)
  rounding = image_files.PROTOCOLS[ev.protocol].rounding
  images = jax.jit(
    lambda a, x: image_files.to_rgb(
      image_files.to_uint8(decode(a, x), rounding), jnp
    )
  )
  f = features.load_feature_fn(ev.inception_path, ev.inception_size)
  out = []
  for start in range(0, len(x0), ev.batch_size):
    batch = x0[start : start + ev.batch_size]
    n = len(batch)
    if n < ev.batch_size:  # One compiled shape: pad, then cut.
      batch = np.concatenate(
        [batch, np.repeat(batch[-1:], ev.batch_size - n, 0)]
      )
    out.append(np.asarray(f(np.asarray(images(aux, batch))))[:n])
  return np.concatenate(out).astype(np.float32)
