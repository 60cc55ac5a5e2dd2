"""EDM's DhariwalUNet (ADM re-implementation) in Flax linen, NHWC.

The consistency network F_theta of every paper result (ALGORITHM.md 11a),
with every normalization layer pluggable through `model.norm`
(ALGORITHM.md 11b, 19; `ilct_jax.models.norms`). Module names mirror
NVlabs/edm `training/networks.py` (`enc_32x32_block0`, `dec_4x4_in0`, `norm0`,
`conv0`, `affine`, `qkv`, `proj`, `skip`, `map_layer0`, `out_norm`,
`out_conv`) so that PyTorch weights could be ported name by name.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ilct_jax import kernels as kernels_lib
from ilct_jax.models import attention, norms
from ilct_jax.models.conv import make_conv as _conv
from ilct_jax.models.conv import make_dense as _dense

PyTree = Any


def count_params(tree: PyTree) -> int:
  """Number of scalars in a pytree of arrays or `jax.ShapeDtypeStruct`s."""
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def sinusoidal_embedding(
  noise_labels: jax.Array, num_channels: int, max_positions: int = 10000
) -> jax.Array:
  """EDM's PositionalEmbedding (endpoint=False): [cos, sin] of c_noise * f.

  Frequencies are (1 / max_positions)^(k / (num_channels / 2)) for
  k = 0 .. num_channels/2 - 1, cos first (ALGORITHM.md 11a). Always float32:
  c_noise = 250 ln(sigma) reaches ~1100, far beyond bf16's resolution.

  Args:
    noise_labels: [B] raw c_noise values.
    num_channels: embedding width (even).
    max_positions: the maximal period.

  Returns:
    [B, num_channels] float32 embedding.
  """
  half = num_channels // 2
  freqs = (1.0 / max_positions) ** (jnp.arange(half, dtype=jnp.float32) / half)
  args = noise_labels.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _downsample(x: jax.Array) -> jax.Array:
  """2x2 average pool: EDM's stride-2 conv with filter [1,1] x [1,1] / 4."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample(x: jax.Array) -> jax.Array:
  """2x nearest: EDM's stride-2 transposed conv with a ones filter."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


_RESAMPLE = {None: lambda x: x, "up": _upsample, "down": _downsample}


class UNetBlock(nn.Module):
  """EDM's UNetBlock for DhariwalUNet: AdaGN residual block (+ attention).

  Attributes:
    out_channels: output channels.
    resample: None, "up" (2x nearest) or "down" (2x2 average pool); applied
      before conv0 and on the skip path.
    attention: add a self-attention layer after the residual block.
    head_channels: channels per attention head (heads = C // head_channels).
    dropout: dropout rate before conv1 (active only when train=True).
    norm: `model.norm`, the kind of norm0/norm1/norm2.
    dtype: activation dtype.
    kernels: the forms of its convolutions, norms and attention.
  """

  out_channels: int
  resample: str | None = None
  attention: bool = False
  head_channels: int = 64
  dropout: float = 0.0
  norm: str = "group"
  dtype: Any = jnp.float32
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    cin, cout = x.shape[-1], self.out_channels
    resample = _RESAMPLE[self.resample]
    norm = functools.partial(
      norms.make_norm, self.norm, dtype=self.dtype, form=self.kernels.norm
    )

    h = nn.silu(norm(module_name="norm0")(x))
    h = _conv(cout, 3, cin, self.dtype, "conv0", form=self.kernels.conv)(
      resample(h)
    )
    params = _dense(2 * cout, emb.shape[-1], self.dtype, "affine")(emb)
    # EDM: scale, shift = params.chunk(2) (scale first); addcmul form.
    scale, shift = jnp.split(params[:, None, None, :], 2, axis=-1)
    h = nn.silu(shift + norm(module_name="norm1")(h) * (1 + scale))
    if train and self.dropout > 0:
      h = nn.Dropout(self.dropout, deterministic=False)(h)
    h = _conv(
      cout, 3, cout, self.dtype, "conv1", zero=True, form=self.kernels.conv
    )(h)

    skip = resample(x)
    if cin != cout:  # EDM: 1x1 conv after the resample.
      skip = _conv(cout, 1, cin, self.dtype, "skip", form=self.kernels.conv)(
        skip
      )
    x = h + skip  # skip_scale = 1 in DhariwalUNet.

    if self.attention:
      heads = self._num_heads(cout, x.shape[1])
      qkv = _conv(3 * cout, 1, cout, self.dtype, "qkv", form=self.kernels.conv)(
        norm(module_name="norm2")(x)
      )
      a = attention.multihead(qkv, heads, form=self.kernels.attention)
      x = x + _conv(
        cout, 1, cout, self.dtype, "proj", zero=True, form=self.kernels.conv
      )(a)
    return x

  def _num_heads(self, channels: int, res: int) -> int:
    if channels < self.head_channels or channels % self.head_channels:
      raise ValueError(
        f"attention at {res}x{res} needs a channel count that is a multiple "
        f"of model.head_channels={self.head_channels}, got {channels}; lower "
        "model.head_channels, widen the model, or drop this resolution from "
        "model.attn_resolutions (the bottleneck's in0 always attends)."
      )
    return channels // self.head_channels


# UNetBlock with its forward recomputed in the backward pass (`model.remat`):
# autodiff keeps only each block's inputs, not its activations. Parameters and
# module names are those of UNetBlock. static_argnums counts `self` as 0, so 3
# is `train` (a Python bool that decides whether dropout runs).
RematUNetBlock = nn.remat(UNetBlock, static_argnums=(3,))


class DhariwalUNet(nn.Module):
  """EDM's DhariwalUNet, unconditional, NHWC (ALGORITHM.md 11a).

  Attributes:
    out_channels: output channels.
    model_channels: base width (level-0 channels, noise-embedding width).
    channel_mult: width multiplier per resolution level.
    num_blocks: residual blocks per encoder level (decoder: num_blocks + 1).
    attn_resolutions: resolutions H >> level whose blocks have attention.
    head_channels: channels per attention head.
    dropout: dropout rate inside the residual blocks.
    norm: `model.norm`, one of `norms.NORMS`, for every norm layer.
    dtype: activation/compute dtype; params stay float32, output is float32.
    remat: recompute each residual block's forward in the backward pass
      (`RematUNetBlock`): less activation memory for more compute; the same
      parameters and values.
    kernels: the forms of every convolution, norm and attention
      (`ilct_jax.kernels.select`: chosen for the target platform); the
      default is the XLA:CPU row. The same parameters and values.
  """

  out_channels: int
  model_channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  num_blocks: int = 4
  attn_resolutions: Sequence[int] = (16, 8)
  head_channels: int = 64
  dropout: float = 0.0
  norm: str = "group"
  dtype: Any = jnp.float32
  remat: bool = False
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()

  @nn.compact
  def __call__(
    self, x: jax.Array, noise_labels: jax.Array, train: bool
  ) -> jax.Array:
    """Maps x [B, H, W, C_in] and c_noise [B] to [B, H, W, out_channels].

    Args:
      x: the network input c_in(sigma) * x_sigma, NHWC.
      noise_labels: raw c_noise = 250 ln(sigma) values (ALGORITHM.md 1).
      train: enables dropout (rng stream "dropout") when dropout > 0.

    Returns:
      float32 [B, H, W, out_channels].
    """
    self._check_input(x, noise_labels)
    emb = self._mapping(noise_labels)
    x, skips = self._encode(x.astype(self.dtype), emb, train)
    x = self._decode(x, skips, emb, train)
    x = nn.silu(self._norm("out_norm")(x))
    x = _conv(
      self.out_channels,
      3,
      x.shape[-1],
      self.dtype,
      "out_conv",
      zero=True,
      form=self.kernels.conv,
    )(x)
    return x.astype(jnp.float32)

  def _check_input(self, x: jax.Array, noise_labels: jax.Array) -> None:
    factor = 2 ** (len(self.channel_mult) - 1)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
        f"DhariwalUNet needs x of shape [B, H, W, C] with H and W multiples "
        f"of 2**(len(channel_mult) - 1) = {factor}, got {x.shape}; resize "
        "the input or use fewer levels."
      )
    if noise_labels.shape != x.shape[:1]:
      raise ValueError(
        f"noise_labels must have shape [B] = {x.shape[:1]}, got "
        f"{noise_labels.shape}; pass one c_noise value per sample."
      )

  def _norm(self, module_name: str) -> nn.Module:
    return norms.make_norm(
      self.norm,
      dtype=self.dtype,
      module_name=module_name,
      form=self.kernels.norm,
    )

  def _block(self, name: str, out_channels: int, **kwargs) -> UNetBlock:
    block = RematUNetBlock if self.remat else UNetBlock
    return block(
      out_channels,
      head_channels=self.head_channels,
      dropout=self.dropout,
      norm=self.norm,
      dtype=self.dtype,
      kernels=self.kernels,
      name=name,
      **kwargs,
    )

  def _mapping(self, noise_labels: jax.Array) -> jax.Array:
    """c_noise -> sinusoid(model_channels) -> Dense/SiLU x2 -> 4 x width."""
    emb_ch = 4 * self.model_channels  # EDM channel_mult_emb = 4.
    emb = sinusoidal_embedding(noise_labels, self.model_channels)
    emb = _dense(emb_ch, self.model_channels, self.dtype, "map_layer0")(emb)
    emb = _dense(emb_ch, emb_ch, self.dtype, "map_layer1")(nn.silu(emb))
    return nn.silu(emb)

  def _encode(
    self, x: jax.Array, emb: jax.Array, train: bool
  ) -> tuple[jax.Array, list[jax.Array]]:
    """Encoder; every module's output is pushed to the skip stack."""
    skips = []
    for level, mult in enumerate(self.channel_mult):
      res = x.shape[1] if level == 0 else x.shape[1] // 2
      prefix = f"enc_{res}x{res}"
      cout = self.model_channels * mult
      if level == 0:
        x = _conv(
          cout,
          3,
          x.shape[-1],
          self.dtype,
          f"{prefix}_conv",
          form=self.kernels.conv,
        )(x)
      else:
        down = self._block(f"{prefix}_down", x.shape[-1], resample="down")
        x = down(x, emb, train)
      skips.append(x)
      for idx in range(self.num_blocks):
        attn = res in self.attn_resolutions
        block = self._block(f"{prefix}_block{idx}", cout, attention=attn)
        x = block(x, emb, train)
        skips.append(x)
    return x, skips

  def _decode(
    self, x: jax.Array, skips: list[jax.Array], emb: jax.Array, train: bool
  ) -> jax.Array:
    """Decoder: in0 (attention) + in1 at the bottom, up blocks elsewhere."""
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      bottom = level == len(self.channel_mult) - 1
      res = x.shape[1] if bottom else 2 * x.shape[1]
      prefix = f"dec_{res}x{res}"
      if bottom:
        c = x.shape[-1]
        x = self._block(f"{prefix}_in0", c, attention=True)(x, emb, train)
        x = self._block(f"{prefix}_in1", c)(x, emb, train)
      else:
        up = self._block(f"{prefix}_up", x.shape[-1], resample="up")
        x = up(x, emb, train)
      for idx in range(self.num_blocks + 1):
        x = jnp.concatenate([x, skips.pop()], axis=-1)
        attn = res in self.attn_resolutions
        block = self._block(
          f"{prefix}_block{idx}", self.model_channels * mult, attention=attn
        )
        x = block(x, emb, train)
    return x
