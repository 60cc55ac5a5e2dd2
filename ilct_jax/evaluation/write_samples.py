"""Turning a train state into images: sampling, decoding, and --mode=sample.

Pixel runs (the digits demo) are already images in [-1, 1]. Latent runs are
de-normalized with the per-element statistics (data/latents.py) and decoded by
the SD VAE when `vae.path` points at a converted checkpoint; without one, only
the latents are written (.npz).
"""

import functools
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from ilct_jax import parallel, rng, runs, sampling, storage
from ilct_jax import setup as setup_lib
from ilct_jax import state as state_lib
from ilct_jax.data import latents
from ilct_jax.evaluation import image_files
from ilct_jax.models import autoencoder, vae_files

PyTree = Any


Decode = Callable[[Any, jax.Array], jax.Array]


@functools.lru_cache(maxsize=4)
def _latent_decoder(
  vae_path: str, stats_path: str, shape: tuple[int, ...], sigma_data: float
) -> tuple[Decode, Any]:
  module, params = vae_files.load_vae(vae_path)
  mean, std = latents.as_jnp(*latents.load_stats(stats_path, shape))

  def decode(aux: Any, x0: jax.Array) -> jax.Array:
    vae_params, m, s = aux
    stored = latents.to_stored(x0, m, s, sigma_data)
    return autoencoder.decode_pure(module, vae_params, stored)

  return decode, (params, mean, std)


def _identity(aux: Any, x0: jax.Array) -> jax.Array:
  del aux
  return x0


def decoder(config: ml_collections.ConfigDict) -> tuple[Decode, Any] | None:
  """(decode(aux, x0) -> images in [-1, 1], aux), or None if not decodable.

  `decode` is pure (usable inside any jit) and `aux` holds its arrays (VAE
  parameters, latent statistics), so they are passed to compiled programs
  as arguments rather than baked in as constants. Pixel runs decode to
  themselves; latent runs need `vae.path`.
  """
  if config.data.source == "digits":
    return _identity, ()
  if not config.vae.path:
    return None
  shape = state_lib.example_shape(config)
  stats = latents.stats_path(config)
  return _latent_decoder(config.vae.path, stats, shape, config.ct.sigma_data)


@functools.lru_cache(maxsize=4)
def _jit(decode: Decode) -> Callable[[Any, jax.Array], jax.Array]:
  return jax.jit(decode)


def image_decoder(
  config: ml_collections.ConfigDict,
) -> Callable[[jax.Array], jax.Array] | None:
  """x0 -> images in [-1, 1] (compiled once), or None if not decodable."""
  parts = decoder(config)
  if parts is None:
    return None
  decode, aux = parts
  return lambda x0: _jit(decode)(aux, x0)


def sample_data(
  config: ml_collections.ConfigDict,
  params: PyTree,
  key: jax.Array,
  num: int,
  sigmas: tuple[float, ...],
  mesh: jax.sharding.Mesh | None = None,
) -> jax.Array:
  """`num` samples in data space (x0) through the given sigmas (a
  class-conditional model's of `sampling.grid_labels`, guided by
  sample.cfg_scale).

  The result is replicated over `mesh` (default: all devices), so every
  process holds all of it. The compiled sampler is cached
  (`sampling.make_sampler`): repeated grids compile nothing.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  fn = sampling.make_sampler(
    state_lib.create_model(config, mesh),
    config.ct,
    (num, *state_lib.example_shape(config)),
    sigmas,
    parallel.replicated(mesh),
    sampling.guide_of(config),
  )
  return fn(params, key, sampling.grid_labels(config, num))


def sample_images(
  config: ml_collections.ConfigDict,
  params: PyTree,
  num: int,
  mesh: jax.sharding.Mesh | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
  """{sampler: (x0 samples, uint8 images or None)} for each named sampler.

  Keys come from the "sample" stream of config.seed (rng.py), folded by the
  sampler's position, so the training grids and --mode=sample of the same
  parameters show the same samples. Images are None when latents cannot be
  decoded (no vae.path). `mesh` holds the devices of `params` (default: all
  devices).
  """
  decode = image_decoder(config)
  base = rng.stream(config.seed, "sample")
  out = {}
  for i, (name, sigmas) in enumerate(sampling.samplers(config).items()):
    key = jax.random.fold_in(base, i)
    x = sample_data(config, params, key, num, sigmas, mesh)
    images = None
    if decode is not None:
      images = np.asarray(image_files.to_uint8(decode(x)))
    out[name] = (np.asarray(x), images)
  return out


def write_grid(path: str, images: np.ndarray) -> None:
  """A PNG grid of uint8 samples (tiny images upscaled to ~128 pixels)."""
  up = max(1, 128 // images.shape[1])
  storage.write_bytes(
    path, image_files.png_bytes(image_files.make_grid(images), up)
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """--mode=sample: PNG grids + .npz of samples from a checkpoint.

  Restores only the EMA `sample.ema_decay` of checkpoint `sample.step`
  (-1: the latest that passes verification) into an abstract target.

  Returns:
    Mapping of sampler name to the written PNG (or .npz) path.
  """
  step = None if config.sample.step < 0 else config.sample.step
  setup = setup_lib.build(config)
  opened = runs.load_run(
    workdir,
    config=config,
    step=step,
    what="ema",
    mesh=setup.mesh,
    abstract=setup.abstract_state,
  )
  out_dir = storage.join(workdir, "samples")
  written = {}
  ema = config.sample.ema_decay
  samples = sample_images(config, opened.params, config.sample.num, setup.mesh)
  for name, (x, images) in samples.items():
    stem = storage.join(out_dir, f"{name}_step{opened.step}_ema{ema}")
    sigmas = setup.samplers[name]
    arrays = {"samples": x, "sigmas": np.asarray(sigmas)}
    if images is not None:
      arrays["images"] = images
      written[name] = stem + ".png"
    else:
      logging.warning("vae.path is empty: writing latents only for %s", name)
      written[name] = stem + ".npz"
    if jax.process_index() == 0:
      if images is not None:
        write_grid(stem + ".png", images)
      storage.save_npz(stem + ".npz", **arrays)
    logging.info("Wrote %s (%d samples, sigmas %s)", stem, len(x), sigmas)
  return written
