"""Turning a train state into images: sampling, decoding, and --mode=sample.

Pixel runs (the digits demo) are already images in [-1, 1]. Latent runs are
de-normalized with the per-element statistics (latents.py) and decoded by the
SD VAE when `vae.path` points at a converted checkpoint; without one, only the
latents are written (.npz).
"""

import functools
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from ilct_jax import checkpointing, parallel, sampling
from ilct_jax import state as state_lib
from ilct_jax.data import latents
from ilct_jax.evaluation import image_io
from ilct_jax.models import autoencoder
from ilct_jax.models import vae as vae_lib

PyTree = Any


@functools.lru_cache(maxsize=4)
def _decoder(vae_path: str, stats_path: str, shape: tuple[int, ...]):
  module, params = vae_lib.load_vae(vae_path)
  mean, std = latents.as_jnp(*latents.load_stats(stats_path, shape))

  @jax.jit
  def decode(x0):
    stored = latents.to_stored(x0, mean, std)
    return autoencoder.decode_pure(module, params, stored)

  return decode


def image_decoder(
  config: ml_collections.ConfigDict,
) -> Callable[[jax.Array], jax.Array] | None:
  """x0 -> images in [-1, 1], or None when latents cannot be decoded."""
  if config.data.source == "digits":
    return lambda x: x
  if not config.vae.path:
    return None
  shape = state_lib.example_shape(config)
  return _decoder(config.vae.path, latents.stats_path(config), shape)


def sample_data(
  config: ml_collections.ConfigDict,
  params: PyTree,
  key: jax.Array,
  num: int,
  sigmas: tuple[float, ...],
) -> jax.Array:
  """`num` samples in data space (x0) through the given sigmas."""
  model = state_lib.create_model(config)
  shape = (num, *state_lib.example_shape(config))
  fn = jax.jit(
    lambda p, k: sampling.sample(model.apply, p, k, shape, sigmas, config.ct)
  )
  return fn(params, key)


def sample_images(
  config: ml_collections.ConfigDict,
  state: state_lib.TrainState,
  num: int,
  seed: int = 0,
) -> dict[str, np.ndarray | None]:
  """uint8 sample grids for each named sampler (None if not decodable)."""
  params = state.ema(config.sample.ema_decay)
  decode = image_decoder(config)
  out = {}
  for i, (name, sigmas) in enumerate(sampling.samplers(config).items()):
    key = jax.random.fold_in(jax.random.key(seed), i)
    x = sample_data(config, params, key, num, sigmas)
    out[name] = (
      None if decode is None else np.asarray(image_io.to_uint8(decode(x)))
    )
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """--mode=sample: PNG grids + .npz of samples from a checkpoint.

  Returns:
    Mapping of sampler name to the written PNG (or .npz) path.
  """
  mngr = checkpointing.create_manager(workdir, config.train, read_only=True)
  mesh = parallel.make_mesh()
  target = state_lib.create_train_state(config, mesh)
  step = None if config.sample.step < 0 else config.sample.step
  state, _ = checkpointing.restore(mngr, config, target, step)
  mngr.close()
  step = int(jax.device_get(state.step))
  params = state.ema(config.sample.ema_decay)
  decode = image_decoder(config)
  out_dir = os.path.join(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  written = {}
  for i, (name, sigmas) in enumerate(sampling.samplers(config).items()):
    key = jax.random.fold_in(jax.random.key(config.seed + 1), i)
    x = sample_data(config, params, key, config.sample.num, sigmas)
    stem = os.path.join(
      out_dir, f"{name}_step{step}_ema{config.sample.ema_decay}"
    )
    arrays = {"samples": np.asarray(x), "sigmas": np.asarray(sigmas)}
    if decode is not None:
      arrays["images"] = np.asarray(image_io.to_uint8(decode(x)))
      grid = image_io.make_grid(arrays["images"])
      up = max(1, 128 // arrays["images"].shape[1])
      image_io.save_png(stem + ".png", grid, upscale=up)
      written[name] = stem + ".png"
    else:
      logging.warning("vae.path is empty: writing latents only for %s", name)
      written[name] = stem + ".npz"
    np.savez_compressed(stem + ".npz", **arrays)
    logging.info("Wrote %s (%d samples, sigmas %s)", stem, len(x), sigmas)
  return written
