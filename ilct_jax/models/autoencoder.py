"""The VAE as the rest of ilct_jax uses it: jitted encode/decode over a mesh.

Images are NHWC in [-1, 1]; latents are NHWC. "Scaled" latents are the VAE's
latents times `SCALING_FACTOR`, the form the reference stores on disk
(ALGORITHM.md §10: `latent_dist.sample() * 0.18215`).

Pure functions (`encode_pure`, `sample_latents`, `decode_pure`) can be
called inside other jitted code; `make_codec` binds a
module, its params and a mesh into jitted, batch-sharded versions with input
checks that fail with one-line messages.
"""

from functools import partial
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ilct_jax.models import vae as vae_lib

PyTree = Any

# ALGORITHM.md §10: latents are stored as posterior samples times this
# (the `scaling_factor` of the SD VAE's diffusers config).
SCALING_FACTOR = 0.18215


def encode_pure(
  vae: vae_lib.AutoencoderKL, params: PyTree, images: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Images [B, H, W, 3] in [-1, 1] -> posterior (mean, logvar), unscaled."""
  posterior = vae.apply({"params": params}, images, method=vae.encode)
  return posterior.mean, posterior.logvar


def sample_latents(
  key: jax.Array, mean: jax.Array, logvar: jax.Array
) -> jax.Array:
  """A posterior sample times SCALING_FACTOR (the reference's stored latent).

  ALGORITHM.md §10: the reference stores a sample, not the mean.
  """
  posterior = vae_lib.DiagonalGaussian(mean, logvar)
  return posterior.sample(key) * SCALING_FACTOR


def decode_pure(
  vae: vae_lib.AutoencoderKL, params: PyTree, latents_scaled: jax.Array
) -> jax.Array:
  """Scaled latents [B, h, w, 4] -> images [B, 8h, 8w, 3], about [-1, 1].

  Latents that are already unscaled (e.g. the inverse of the per-element
  normalization, ALGORITHM.md §10) go through `vae.decode` directly, or
  here after multiplying by SCALING_FACTOR.
  """
  latents = latents_scaled / SCALING_FACTOR
  return vae.apply({"params": params}, latents, method=vae.decode)


class Codec:
  """A VAE with replicated params whose calls shard the batch over a mesh.

  Attributes:
    vae: the Flax module.
    params: its params, replicated over `mesh`.
    mesh: the device mesh; the batch is split over its `axis`.
  """

  def __init__(
    self,
    vae: vae_lib.AutoencoderKL,
    params: PyTree,
    mesh: Mesh,
    axis: str = "data",
  ):
    self.vae, self.mesh, self.axis = vae, mesh, axis
    self._data = NamedSharding(mesh, P(axis))
    repl = NamedSharding(mesh, P())
    self.params = jax.device_put(params, repl)
    self._encode = jax.jit(
      partial(encode_pure, vae),
      in_shardings=(repl, self._data),
      out_shardings=(self._data, self._data),
    )
    self._sample = jax.jit(
      sample_latents,
      in_shardings=(repl, self._data, self._data),
      out_shardings=self._data,
    )
    self._decode = jax.jit(
      partial(decode_pure, vae),
      in_shardings=(repl, self._data),
      out_shardings=self._data,
    )

  def _shard(self, batch: Any, what: str) -> jax.Array:
    devices = self.mesh.shape[self.axis]
    if np.shape(batch)[0] % devices:
      raise ValueError(
        f"{what} batch of {np.shape(batch)[0]} is not divisible by the"
        f" {devices} devices on mesh axis {self.axis!r}; use a multiple of"
        f" {devices}."
      )
    return jax.device_put(batch, self._data)

  def encode(self, images: Any) -> tuple[jax.Array, jax.Array]:
    """Images [B, H, W, 3] in [-1, 1] -> (mean, logvar) [B, H/8, W/8, 4]."""
    vae = self.vae
    vae_lib.check_images(images, vae.in_channels, vae.downsample_factor)
    return self._encode(self.params, self._shard(images, "image"))

  def sample_latents(
    self, key: jax.Array, mean: jax.Array, logvar: jax.Array
  ) -> jax.Array:
    """A posterior sample times SCALING_FACTOR, sharded like `mean`."""
    return self._sample(
      key, self._shard(mean, "mean"), self._shard(logvar, "logvar")
    )

  def decode(self, latents_scaled: Any) -> jax.Array:
    """Scaled latents [B, h, w, 4] -> images [B, 8h, 8w, 3], about [-1, 1]."""
    shape = tuple(np.shape(latents_scaled))
    channels = self.vae.latent_channels
    if len(shape) != 4 or shape[-1] != channels:
      raise ValueError(
        f"latents have shape {shape}; expected [B, h, w, {channels}] (NHWC"
        f" with {channels} channels)."
      )
    return self._decode(self.params, self._shard(latents_scaled, "latent"))


def make_codec(
  vae: vae_lib.AutoencoderKL, params: PyTree, mesh: Mesh, axis: str = "data"
) -> Codec:
  """Binds `vae` and `params` to `mesh`: params replicated, batch over `axis`.

  Args:
    vae: the Flax AutoencoderKL (e.g. from `vae_files.load_vae`).
    params: its params.
    mesh: a mesh with an axis named `axis`.
    axis: the data-parallel mesh axis.

  Returns:
    A `Codec` with jitted `encode`, `sample_latents` and `decode`.
  """
  if axis not in mesh.shape:
    raise ValueError(
      f"mesh axes {tuple(mesh.shape)} lack {axis!r}; build the mesh with"
      f" jax.make_mesh((n,), ({axis!r},))."
    )
  return Codec(vae, params, mesh, axis)
