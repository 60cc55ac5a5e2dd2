"""Pluggable normalization layers for the consistency UNet (`model.norm`).

The paper's UNet replaces every GroupNorm of EDM's DhariwalUNet by a
"non-scaling" LayerNorm (NsLN) over the whole feature map of each sample
(ALGORITHM.md 11b, 19). The other choices exist for the ablations of
ALGORITHM.md 16. All layers take NHWC inputs, infer their parameter shapes
from the input at init, compute statistics in float32 (so bf16 activations
keep accurate means and variances) and return `dtype`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("nsln", "group", "layer", "rms", "instance")

_MAP_AXES = (1, 2, 3)  # (H, W, C): one statistic per sample.
_SPATIAL_AXES = (1, 2)  # (H, W): one statistic per sample and channel.


def _standardize(x: jax.Array, axes: tuple[int, ...], eps: float) -> jax.Array:
  """(x - mean) / sqrt(var + eps) over `axes`, in float32.

  The variance is the biased one of the centred values (two passes), as
  torch.nn.functional.layer_norm / group_norm compute it.
  """
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=axes, keepdims=True)
  centred = x - mean
  var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
  return centred * jax.lax.rsqrt(var + eps)


def _ones(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  del key
  return jnp.ones(shape, jnp.float32)


def _zeros(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  del key
  return jnp.zeros(shape, jnp.float32)


class NonScalingLayerNorm(nn.Module):
  """NsLN: LayerNorm over each sample's whole (H, W, C) map, no scale.

  `y = (x - mu) / sqrt(var + eps) + bias` with one mu and one var per sample
  and a learnable per-element `bias` of shape (H, W, C), initialised to 0.
  The reference (LCT branch `ot`) keeps a gamma frozen at 1; here there is no
  scale parameter at all (ALGORITHM.md 11b, 19), which is the same function.

  Attributes:
    eps: variance epsilon (1e-5 in the reference).
    dtype: output dtype.
  """

  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    bias = self.param("bias", _zeros, x.shape[1:])
    y = _standardize(x, _MAP_AXES, self.eps) + bias
    return y.astype(self.dtype)


class LayerNorm(nn.Module):
  """Scaled LayerNorm over each sample's whole (H, W, C) map.

  Per-element `scale` (init 1) and `bias` (init 0) of shape (H, W, C), as
  torch `nn.LayerNorm([C, H, W])` (the "layer-norm" ablation, ALGORITHM 11b).

  Attributes:
    eps: variance epsilon.
    dtype: output dtype.
  """

  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", _ones, x.shape[1:])
    bias = self.param("bias", _zeros, x.shape[1:])
    y = _standardize(x, _MAP_AXES, self.eps) * scale + bias
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """RMSNorm over each sample's whole (H, W, C) map, per-element scale.

  `y = x / sqrt(mean(x^2) + eps) * scale`, no centring and no bias, with
  `scale` of shape (H, W, C) initialised to 1 (torch `nn.RMSNorm([C, H, W])`).

  Attributes:
    eps: epsilon added to the mean square.
    dtype: output dtype.
  """

  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", _ones, x.shape[1:])
    x32 = x.astype(jnp.float32)
    ms = jnp.mean(jnp.square(x32), axis=_MAP_AXES, keepdims=True)
    y = x32 * jax.lax.rsqrt(ms + self.eps) * scale
    return y.astype(self.dtype)


class InstanceNorm(nn.Module):
  """InstanceNorm: per sample and channel over (H, W), per-channel affine.

  Attributes:
    eps: variance epsilon.
    dtype: output dtype.
  """

  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param("scale", _ones, (channels,))
    bias = self.param("bias", _zeros, (channels,))
    y = _standardize(x, _SPATIAL_AXES, self.eps) * scale + bias
    return y.astype(self.dtype)


class GroupNorm(nn.Module):
  """GroupNorm as in EDM: min(num_groups, C // 4) groups, per-channel affine.

  EDM `training/networks.py` GroupNorm: at least 4 channels per group, eps
  1e-5, per-channel `scale` (init 1) and `bias` (init 0). This is the default
  norm of the iLCT baseline (ALGORITHM.md 11b).

  Attributes:
    num_groups: the maximal number of groups.
    eps: variance epsilon.
    dtype: output dtype.
  """

  num_groups: int = 32
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    groups = min(self.num_groups, channels // 4)
    if groups < 1 or channels % groups:
      raise ValueError(
        f"GroupNorm cannot split {channels} channels into "
        f"min({self.num_groups}, {channels} // 4) = {groups} equal groups; "
        "use a channel count that is a multiple of 4 (at least 4)."
      )
    scale = self.param("scale", _ones, (channels,))
    bias = self.param("bias", _zeros, (channels,))
    grouped = x.reshape(*x.shape[:-1], groups, channels // groups)
    y = _standardize(grouped, (1, 2, 4), self.eps).reshape(x.shape)
    return (y * scale + bias).astype(self.dtype)


def make_norm(
  name: str,
  *,
  num_groups: int = 32,
  eps: float = 1e-5,
  dtype: Any = jnp.float32,
  module_name: str | None = None,
) -> nn.Module:
  """Builds a fresh normalization module chosen by `model.norm`.

  Args:
    name: one of `NORMS`.
    num_groups: maximal group count (only used by "group").
    eps: variance epsilon (1e-5 everywhere in EDM and the reference).
    dtype: output dtype; statistics are always computed in float32.
    module_name: the Flax submodule name (e.g. "norm0") when built inside a
      compact method; None lets Flax pick one.

  Returns:
    An unbound linen module mapping [B, H, W, C] to [B, H, W, C].

  Raises:
    ValueError: if `name` is not one of `NORMS`.
  """
  kwargs = dict(eps=eps, dtype=dtype, name=module_name)
  if name == "nsln":
    return NonScalingLayerNorm(**kwargs)
  if name == "group":
    return GroupNorm(num_groups=num_groups, **kwargs)
  if name == "layer":
    return LayerNorm(**kwargs)
  if name == "rms":
    return RMSNorm(**kwargs)
  if name == "instance":
    return InstanceNorm(**kwargs)
  raise ValueError(
    f"model.norm={name!r} is unknown; choose one of {', '.join(NORMS)}"
  )
