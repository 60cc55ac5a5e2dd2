"""Pluggable normalization layers for the consistency UNet (`model.norm`).

The paper's UNet replaces every GroupNorm of EDM's DhariwalUNet by a
"non-scaling" LayerNorm (NsLN) over the whole feature map of each sample
(ALGORITHM.md §11, §19). The other choices exist for the ablations of
ALGORITHM.md §16. All layers take NHWC inputs, infer their parameter shapes
from the input at init, compute statistics in float32 (so bf16 activations
keep accurate means and variances) and return `dtype`.

Every layer is one `_normalize` call: statistics per sample and group of
channels (a LayerNorm is one group, an InstanceNorm one group per channel),
built from per-channel sums over (H, W) — column reductions that XLA:CPU
emits far faster than one reduction over (H, W, channels-of-a-group) of a
5-d view — and a hand-written backward that reads the input and the output
gradient once for all its sums (the two of the standardization and those of
the affine parameters) and once more for the input gradient. Autodiff of
the same forward re-reads the activations about twice as often.

Channels and groups meet only through a [groups, C] one-hot membership
matrix (`_group_sum`, `_per_channel`): small [B, C] x [C, groups] products.
Written as reshapes instead, XLA's simplifier carries the [B, groups, C/g]
split into the full-size elementwise passes, which then loop over 5-d
[B, H, W, groups, C/g] maps with a minor dimension of a few channels; on
XLA:CPU that made the paper step 4% slower (docs/DESIGN.md, speed).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ilct_jax import choices

NORMS = ("nsln", "group", "layer", "rms", "instance")
RMS_EPS = float(jnp.finfo(jnp.float32).eps)  # torch.finfo(float32).eps.

_HW = (1, 2)  # Spatial axes of an NHWC map.
# Full float32 products: TPUs (bf16 passes) and GPUs (TF32) would otherwise
# round the statistics in the membership products.
_EXACT = jax.lax.Precision.HIGHEST


def _membership(groups: int, channels: int) -> jax.Array:
  """[groups, C] float32 one-hot: row g marks the channels of group g."""
  return jnp.repeat(jnp.eye(groups, dtype=jnp.float32), channels // groups, 1)


def _group_sum(t: jax.Array, groups: int) -> jax.Array:
  """[B, C] per-channel values -> [B, groups] sums over each group."""
  member = _membership(groups, t.shape[1])
  return jnp.dot(t, member.T, precision=_EXACT)


def _per_channel(t: jax.Array, channels: int) -> jax.Array:
  """[B, groups] per-group values -> [B, 1, 1, C] (each channel its group's)."""
  member = _membership(t.shape[1], channels)
  return jnp.dot(t, member, precision=_EXACT).reshape(t.shape[0], 1, 1, -1)


def _stats(x32: jax.Array, groups: int, eps: float, center: bool):
  """Per (sample, group) mean and 1/sqrt(var + eps), as [B, 1, 1, C] maps.

  The variance is the biased one of the centred values (two passes), as
  torch.nn.functional.layer_norm / group_norm compute it; without `center`
  (RMSNorm) it is the mean square and the mean is None.
  """
  _, h, w, c = x32.shape
  n = h * w * (c // groups)
  if center:
    mean = _per_channel(_group_sum(jnp.sum(x32, _HW), groups) / n, c)
    x32 = x32 - mean
  else:
    mean = None
  var = _group_sum(jnp.sum(jnp.square(x32), _HW), groups) / n
  return mean, _per_channel(jax.lax.rsqrt(var + eps), c)


def _standardized(x, mean, rstd):
  x32 = x.astype(jnp.float32)
  return (x32 if mean is None else x32 - mean) * rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _normalize(x, scale, bias, groups, eps, center, dtype):
  """(x - mean) / sqrt(var + eps) * scale + bias, stats per sample and group.

  Args:
    x: [B, H, W, C] input (any float dtype).
    scale: None, [C] or [H, W, C] float32 (broadcast against x).
    bias: None, [C] or [H, W, C] float32.
    groups: channel groups sharing one statistic (1: the whole map).
    eps: variance epsilon.
    center: subtract the mean (False: RMSNorm).
    dtype: output dtype.

  Returns:
    [B, H, W, C] in `dtype`.
  """
  return _normalize_fwd(x, scale, bias, groups, eps, center, dtype)[0]


def _normalize_fwd(x, scale, bias, groups, eps, center, dtype):
  mean, rstd = _stats(x.astype(jnp.float32), groups, eps, center)
  y = _standardized(x, mean, rstd)
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return y.astype(dtype), (x, scale, bias, mean, rstd)


def _param_sums(t: jax.Array, param, per_sample: jax.Array | None = None):
  """Sum of t [B, H, W, C] over the axes that `param` is broadcast along.

  `per_sample`, the [B, C] sums of t over (H, W) when already computed,
  finishes a per-channel parameter's sum without another pass over t.
  """
  if param.ndim == 1:
    if per_sample is not None:
      return jnp.sum(per_sample, axis=0)
    return jnp.sum(t, axis=(0, 1, 2))
  return jnp.sum(t, axis=0)


def _normalize_bwd(groups, eps, center, dtype, res, dy):
  del eps, dtype
  x, scale, bias, mean, rstd = res
  _, h, w, c = x.shape
  n = h * w * (c // groups)
  xhat = _standardized(x, mean, rstd)
  dy = dy.astype(jnp.float32)
  # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), means per
  # (sample, group); without centring the mean(dxhat) term drops out.
  dy_xhat = dy * xhat
  if scale is None or scale.ndim == 1:
    # dxhat = dy * scale_c: every sum (these two means and the per-channel
    # parameters' gradients) comes from two (H, W) sums of the big maps.
    s_xy, s_y = jnp.sum(dy_xhat, _HW), jnp.sum(dy, _HW)  # [B, C] each
    scale_c = 1.0 if scale is None else scale
    dxhat, w_xy, w_y = dy * scale_c, s_xy * scale_c, s_y * scale_c
  else:  # A per-element scale needs sums of its own.
    s_xy = s_y = None
    dxhat = dy * scale
    w_xy, w_y = jnp.sum(dxhat * xhat, _HW), jnp.sum(dxhat, _HW)
  d_scale = None if scale is None else _param_sums(dy_xhat, scale, s_xy)
  d_bias = None if bias is None else _param_sums(dy, bias, s_y)
  dx = dxhat - xhat * _per_channel(_group_sum(w_xy, groups) / n, c)
  if center:
    dx = dx - _per_channel(_group_sum(w_y, groups) / n, c)
  return (rstd * dx).astype(x.dtype), d_scale, d_bias


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def _plain_normalize(x, scale, bias, groups, eps, center, dtype):
  """`_normalize` as the textbook formula over a [B, H, W, G, C/G] view.

  Statistics in float32, differentiated by autodiff: the plain form that
  `model.kernels.norm="xla"` compiles (`ilct_jax.kernels`).
  """
  b, h, w, c = x.shape
  x32 = x.astype(jnp.float32).reshape(b, h, w, groups, c // groups)
  axes = (1, 2, 4)
  if center:
    x32 = x32 - jnp.mean(x32, axes, keepdims=True)
  var = jnp.mean(jnp.square(x32), axes, keepdims=True)
  y = (x32 * jax.lax.rsqrt(var + eps)).reshape(b, h, w, c)
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return y.astype(dtype)


def _apply(form, x, scale, bias, groups, eps, center, dtype):
  """The norm in the form `model.kernels.norm` names ("custom" | "xla")."""
  fn = _normalize if form == "custom" else _plain_normalize
  return fn(x, scale, bias, groups, eps, center, dtype)


def _ones(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  del key
  return jnp.ones(shape, jnp.float32)


def _zeros(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  del key
  return jnp.zeros(shape, jnp.float32)


def _check_nhwc(name: str, x: jax.Array) -> None:
  if x.ndim != 4:
    raise ValueError(
      f"{name} takes NHWC maps [B, H, W, C], got shape {x.shape}"
    )


class NonScalingLayerNorm(nn.Module):
  """NsLN: LayerNorm over each sample's whole (H, W, C) map, no scale.

  `y = (x - mu) / sqrt(var + eps) + bias` with one mu and one var per sample
  and a learnable per-element `bias` of shape (H, W, C), initialised to 0.
  The reference (LCT branch `ot`) keeps a gamma frozen at 1; here there is no
  scale parameter at all (ALGORITHM.md §11, §19), which is the same function.

  Attributes:
    eps: variance epsilon (1e-5 in the reference).
    dtype: output dtype.
    form: `model.kernels.norm` ("custom" backward or "xla" autodiff).
  """

  eps: float = 1e-5
  dtype: Any = jnp.float32
  form: str = "custom"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_nhwc("NonScalingLayerNorm", x)
    bias = self.param("bias", _zeros, x.shape[1:])
    return _apply(self.form, x, None, bias, 1, self.eps, True, self.dtype)


class LayerNorm(nn.Module):
  """Scaled LayerNorm over each sample's whole (H, W, C) map.

  Per-element `scale` (init 1) and `bias` (init 0) of shape (H, W, C), as
  torch `nn.LayerNorm([C, H, W])` (the "layer-norm" ablation, ALGORITHM 11b).

  Attributes:
    eps: variance epsilon.
    dtype: output dtype.
    form: `model.kernels.norm` ("custom" backward or "xla" autodiff).
  """

  eps: float = 1e-5
  dtype: Any = jnp.float32
  form: str = "custom"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_nhwc("LayerNorm", x)
    scale = self.param("scale", _ones, x.shape[1:])
    bias = self.param("bias", _zeros, x.shape[1:])
    return _apply(self.form, x, scale, bias, 1, self.eps, True, self.dtype)


class RMSNorm(nn.Module):
  """RMSNorm over each sample's whole (H, W, C) map, per-element scale.

  `y = x / sqrt(mean(x^2) + eps) * scale`, no centring and no bias, with
  `scale` of shape (H, W, C) initialised to 1 (torch `nn.RMSNorm([C, H, W])`).

  Attributes:
    eps: epsilon added to the mean square; torch's `nn.RMSNorm(eps=None)`,
      the ablation's reference (ALGORITHM.md §16), uses the float32 machine
      epsilon, and so does this default.
    dtype: output dtype.
    form: `model.kernels.norm` ("custom" backward or "xla" autodiff).
  """

  eps: float = RMS_EPS
  dtype: Any = jnp.float32
  form: str = "custom"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_nhwc("RMSNorm", x)
    scale = self.param("scale", _ones, x.shape[1:])
    return _apply(self.form, x, scale, None, 1, self.eps, False, self.dtype)


class InstanceNorm(nn.Module):
  """InstanceNorm: per sample and channel over (H, W), per-channel affine.

  Attributes:
    eps: variance epsilon.
    dtype: output dtype.
    form: `model.kernels.norm` ("custom" backward or "xla" autodiff).
  """

  eps: float = 1e-5
  dtype: Any = jnp.float32
  form: str = "custom"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_nhwc("InstanceNorm", x)
    channels = x.shape[-1]
    scale = self.param("scale", _ones, (channels,))
    bias = self.param("bias", _zeros, (channels,))
    return _apply(
      self.form, x, scale, bias, channels, self.eps, True, self.dtype
    )


class GroupNorm(nn.Module):
  """GroupNorm as in EDM: min(num_groups, C // 4) groups, per-channel affine.

  EDM `training/networks.py` GroupNorm: at least 4 channels per group, eps
  1e-5, per-channel `scale` (init 1) and `bias` (init 0). This is the default
  norm of the iLCT baseline (ALGORITHM.md 11b).

  Attributes:
    num_groups: the maximal number of groups.
    eps: variance epsilon.
    dtype: output dtype.
    form: `model.kernels.norm` ("custom" backward or "xla" autodiff).
  """

  num_groups: int = 32
  eps: float = 1e-5
  dtype: Any = jnp.float32
  form: str = "custom"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_nhwc("GroupNorm", x)
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
    return _apply(self.form, x, scale, bias, groups, self.eps, True, self.dtype)


def make_norm(
  name: str,
  *,
  num_groups: int = 32,
  eps: float | None = None,
  dtype: Any = jnp.float32,
  module_name: str | None = None,
  form: str = "custom",
) -> nn.Module:
  """Builds a fresh normalization module chosen by `model.norm`.

  Args:
    name: one of `NORMS`.
    num_groups: maximal group count (only used by "group").
    eps: variance epsilon; None takes each norm's reference value (1e-5
      everywhere in EDM and the reference, torch's float32 epsilon for
      `rms`).
    dtype: output dtype; statistics are always computed in float32.
    module_name: the Flax submodule name (e.g. "norm0") when built inside a
      compact method; None lets Flax pick one.
    form: "custom" (hand-written backward) or "xla" (the plain formula,
      autodiff): `ilct_jax.kernels.Kernels.norm`.

  Returns:
    An unbound linen module mapping [B, H, W, C] to [B, H, W, C].

  Raises:
    ValueError: if `name` is not one of `NORMS`.
  """
  choices.check("model.norm", name, NORMS)
  kwargs = dict(dtype=dtype, name=module_name, form=form)
  if eps is not None:
    kwargs["eps"] = eps
  if name == "nsln":
    return NonScalingLayerNorm(**kwargs)
  if name == "group":
    return GroupNorm(num_groups=num_groups, **kwargs)
  if name == "layer":
    return LayerNorm(**kwargs)
  if name == "rms":
    return RMSNorm(**kwargs)
  return InstanceNorm(**kwargs)
