"""The authors' DiT (adaLN-Zero transformer) on the latent grid, Flax, NHWC.

The consistency network F_theta of `model.arch=dit` (docs/ALGORITHM.md §20):
the transformer the paper's authors moved to after it (quandao10/LCT, branch
`trans_reproduce`, models/network_dit.py; their sLCT README reports its
numbers). Same call as the UNet: (c_in x, c_noise = 250 ln sigma, train)
-> F, plus the class labels of a class-conditional model. Its switches:

  norm        nsln: LayerNorm with neither scale nor bias (the authors'
              `norm_type=layer`, elementwise_affine=False); rms: their
              RMSNorm (a learned scale, eps 1e-6); layer: LayerNorm with
              scale and bias (not the authors'; a baseline).
  qk_norm     a norm over each head's q and k (timm's `qk_norm=True`).
  rope        2-D rotary embedding of q and k (their `--use-rope`), added
              to the fixed 2-D sin-cos positions, which are always on.
  freq_filter a learned complex filter on the token grid's 2-D FFT before
              the MLP (their `freq_type=prev_mlp`), initialised to 1.
  mlp         gelu (DiT's Mlp, tanh GELU), relu (the same Mlp with ReLU,
              their `linear_act=relu`) or gate_relu (their GLU FFN).

Module names follow the authors' state_dict (x_embedder, t_embedder,
y_embedder, blocks_i, adaLN_modulation, final_layer) so
`convert_dit.from_torch` maps their weights name by name.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ilct_jax import kernels as kernels_lib
from ilct_jax.models import unet

# (depth, hidden size, heads) of DiT-S/B/L/XL (network_dit.py, DiT_models).
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16),
         "XL": (28, 1152, 16)}  # fmt: skip
NORMS = ("nsln", "rms", "layer")
MLPS = ("gelu", "relu", "gate_relu")
TIME_FREQUENCIES = 256  # TimestepEmbedder's frequency_embedding_size.

_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def _dense(features: int, name: str, dtype: Any, zero: bool = False, init=None):
  """nn.Linear as the authors initialise it: xavier-uniform, zero bias."""
  kernel_init = _zeros if zero else (init or _xavier)
  return nn.Dense(
    features, kernel_init=kernel_init, bias_init=_zeros, dtype=dtype, name=name
  )


def _token_norm(kind: str, name: str, eps: float = 1e-6) -> nn.Module:
  """A norm over the last (feature) axis, computed in float32."""
  if kind == "rms":
    return nn.RMSNorm(epsilon=eps, dtype=jnp.float32, name=name)
  affine = kind == "layer"
  return nn.LayerNorm(
    epsilon=eps,
    use_scale=affine,
    use_bias=affine,
    dtype=jnp.float32,
    name=name,
  )


def _qk_norm(kind: str, name: str) -> nn.Module:
  """timm's `norm_layer(head_dim)`: the authors pass nn.LayerNorm (default
  eps 1e-5, scale and bias) or their RMSNorm (eps 1e-6, a scale)."""
  if kind == "rms":
    return nn.RMSNorm(epsilon=1e-6, dtype=jnp.float32, name=name)
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name=name)


def sincos_positions(dim: int, grid: int) -> np.ndarray:
  """MAE's fixed 2-D sin-cos table [grid*grid, dim] (float32).

  As network_dit.py's get_2d_sincos_pos_embed: the first half of the
  channels encodes the column index (its `np.meshgrid(grid_w, grid_h)` puts
  w first), the second the row; each half is [sin, cos] of pos * omega with
  omega_k = 10000^(-k / (dim / 4)).
  """
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
  cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))

  def one(pos):
    out = np.outer(pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)

  return np.concatenate([one(cols), one(rows)], axis=1).astype(np.float32)


def rope_tables(head_dim: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
  """cos and sin [grid*grid, head_dim] of EVA's VisionRotaryEmbeddingFast.

  network_dit.py builds it with dim = head_dim / 2: dim / 2 frequencies
  10000^(-2k / dim), each repeated twice (pairs rotate together); the first
  half of a head's channels rotates with the token's row, the second with
  its column.
  """
  dim = head_dim // 2
  freqs = 1.0 / 10000 ** (np.arange(0, dim, 2, dtype=np.float32) / dim)
  pos = np.arange(grid, dtype=np.float32) / grid * grid
  f = np.repeat(np.outer(pos, freqs), 2, axis=-1)  # [grid, dim]
  rows = np.broadcast_to(f[:, None, :], (grid, grid, dim))
  cols = np.broadcast_to(f[None, :, :], (grid, grid, dim))
  table = np.concatenate([rows, cols], axis=-1).reshape(grid * grid, head_dim)
  return np.cos(table).astype(np.float32), np.sin(table).astype(np.float32)


def _rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x * cos + rotate_half(x) * sin, pairs (x0, x1) -> (-x1, x0)."""
  pairs = x.reshape(*x.shape[:-1], -1, 2)
  half = jnp.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
  return x * cos + half * sin


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


class Attention(nn.Module):
  """timm's Attention (qkv with bias, optional q/k norm, proj) + RoPE.

  The authors call it with a `feat_rope` argument their installed timm had
  and no release of timm has; as EVA (which their rotary code credits), the
  rotation is applied to q and k after their norms (docs/ALGORITHM.md §20).
  """

  heads: int
  norm: str
  qk_norm: bool
  rope: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    hd = d // self.heads
    qkv = _dense(3 * d, "qkv", self.dtype)(x).reshape(b, n, 3, self.heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
    if self.qk_norm:
      q = _qk_norm(self.norm, "q_norm")(q).astype(self.dtype)
      k = _qk_norm(self.norm, "k_norm")(k).astype(self.dtype)
    if self.rope:
      cos, sin = rope_tables(hd, int(round(n**0.5)))
      cos, sin = (jnp.asarray(t, self.dtype)[:, None, :] for t in (cos, sin))
      q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    out = jax.nn.dot_product_attention(q, k, v)  # scale hd^-1/2.
    return _dense(d, "proj", self.dtype)(out.reshape(b, n, d))


class Mlp(nn.Module):
  """DiT's Mlp (fc1, tanh GELU or ReLU, fc2) or the authors' GLU FFN gate_relu
  (w12 -> relu(first half) * second half -> w3), hidden = ratio * width."""

  kind: str
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    if self.kind == "gate_relu":
      x1, x2 = jnp.split(_dense(2 * self.hidden, "w12", self.dtype)(x), 2, -1)
      return _dense(d, "w3", self.dtype)(nn.relu(x1) * x2)
    h = _dense(self.hidden, "fc1", self.dtype)(x)
    h = nn.relu(h) if self.kind == "relu" else nn.gelu(h, approximate=True)
    return _dense(d, "fc2", self.dtype)(h)


def _identity_filter(key, shape, dtype=jnp.float32):
  """The authors' init of a frequency filter: real 1, imaginary 0."""
  del key
  return jnp.stack([jnp.ones(shape[:-1]), jnp.zeros(shape[:-1])], -1).astype(
    dtype
  )


class DiTBlock(nn.Module):
  """adaLN-Zero block: attention then MLP, each modulated and gated by c."""

  heads: int
  mlp: str
  mlp_ratio: float
  norm: str
  qk_norm: bool
  rope: bool
  freq_filter: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    b, n, d = x.shape
    mod = _dense(6 * d, "adaLN_modulation_1", self.dtype, zero=True)(nn.silu(c))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(mod, 6, -1)
    h = _modulate(_token_norm(self.norm, "norm1")(x), shift_a, scale_a)
    h = Attention(
      self.heads, self.norm, self.qk_norm, self.rope, self.dtype, name="attn"
    )(h.astype(self.dtype))
    x = x + gate_a[:, None, :] * h
    h = _modulate(_token_norm(self.norm, "norm2")(x), shift_m, scale_m)
    if self.freq_filter:
      h = self._filter(h)
    h = Mlp(self.mlp, int(d * self.mlp_ratio), self.dtype, name="mlp")(
      h.astype(self.dtype)
    )
    return x + gate_m[:, None, :] * h

  def _filter(self, h: jax.Array) -> jax.Array:
    """rfft2 over the token grid (ortho), times the learned complex filter
    (stored as the authors' [D, g, g // 2 + 1, (re, im)]), irfft2."""
    b, n, d = h.shape
    g = int(round(n**0.5))
    w = self.param("prev_mlp", _identity_filter, (d, g, g // 2 + 1, 2))
    filt = jnp.transpose(jax.lax.complex(w[..., 0], w[..., 1]), (1, 2, 0))
    grid = h.astype(jnp.float32).reshape(b, g, g, d)
    spec = jnp.fft.rfft2(grid, axes=(1, 2), norm="ortho") * filt
    out = jnp.fft.irfft2(spec, s=(g, g), axes=(1, 2), norm="ortho")
    return out.reshape(b, n, d)


class DiT(nn.Module):
  """The authors' DiT as F_theta (docs/ALGORITHM.md §20).

  Attributes:
    out_channels: channels of the latent (input and output).
    patch: patch side on the latent grid (2 or 4).
    depth, hidden, heads: blocks, width, attention heads (`SIZES`).
    mlp_ratio: MLP hidden width / width.
    mlp: one of MLPS.
    norm: one of NORMS (every block, final layer; q/k norms follow it).
    qk_norm, rope, freq_filter: the switches of the module docstring.
    num_classes: 0 = unconditional; labels in [0, num_classes).
    null_label: whether the label table has the null (guidance) row at
      index num_classes; the authors add it when label dropout is on, and
      an unconditional model then embeds that row for every sample.
    dtype: activation dtype; params, norms and the FFT stay float32.
    remat: recompute each block in the backward pass.
    kernels: the program's kernel choices; only its compiler options apply
      to this network (it has no convolutions or custom norms).
  """

  out_channels: int
  patch: int = 2
  depth: int = 12
  hidden: int = 768
  heads: int = 12
  mlp_ratio: float = 4.0
  mlp: str = "gate_relu"
  norm: str = "rms"
  qk_norm: bool = True
  rope: bool = True
  freq_filter: bool = True
  num_classes: int = 0
  null_label: bool = True
  dtype: Any = jnp.float32
  remat: bool = False
  kernels: kernels_lib.Kernels = kernels_lib.Kernels()

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    noise_labels: jax.Array,
    train: bool,
    labels: jax.Array | None = None,
  ) -> jax.Array:
    """Maps x [B, H, W, C] and c_noise [B] (and labels [B]) to [B, H, W, C].

    `labels` None (or entries equal to num_classes) selects the null label.
    `train` is accepted for the UNet's signature; the DiT has no dropout
    (label dropout is the train step's, `step.drop_labels`).
    """
    del train
    self._check(x, noise_labels)
    b, hgt, wid, _ = x.shape
    p, g = self.patch, hgt // self.patch
    tokens = x.astype(jnp.float32).reshape(b, g, p, g, p, x.shape[-1])
    tokens = tokens.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, -1)
    h = _dense(self.hidden, "x_embedder_proj", jnp.float32)(tokens)
    h = h + sincos_positions(self.hidden, g)[None]
    c = self._time(noise_labels) + self._label(labels, b)
    block = nn.remat(DiTBlock) if self.remat else DiTBlock
    for i in range(self.depth):
      h = block(
        self.heads,
        self.mlp,
        self.mlp_ratio,
        self.norm,
        self.qk_norm,
        self.rope,
        self.freq_filter,
        self.dtype,
        name=f"blocks_{i}",
      )(h, c)
    mod = _dense(2 * self.hidden, "final_adaLN_modulation_1", jnp.float32, True)
    shift, scale = jnp.split(mod(nn.silu(c)), 2, -1)
    h = _modulate(_token_norm(self.norm, "final_norm")(h), shift, scale)
    out = _dense(p * p * self.out_channels, "final_linear", jnp.float32, True)
    h = out(h.astype(jnp.float32)).reshape(b, g, g, p, p, self.out_channels)
    h = h.transpose(0, 1, 3, 2, 4, 5).reshape(b, hgt, wid, self.out_channels)
    return h.astype(jnp.float32)

  def _check(self, x: jax.Array, noise_labels: jax.Array) -> None:
    if x.ndim != 4 or x.shape[1] != x.shape[2] or x.shape[1] % self.patch:
      raise ValueError(
        f"DiT needs square x [B, H, W, C] with H a multiple of "
        f"model.dit.patch={self.patch}, got {x.shape}; change the patch or "
        "data.image_size"
      )
    if self.hidden % self.heads or (self.hidden // self.heads) % 4:
      raise ValueError(
        f"DiT width {self.hidden} must split into {self.heads} heads of a "
        "multiple of 4 channels (rotary pairs); change model.dit.hidden "
        "or model.dit.heads"
      )
    if noise_labels.shape != x.shape[:1]:
      raise ValueError(
        f"noise_labels must have shape [B] = {x.shape[:1]}, got "
        f"{noise_labels.shape}; pass one c_noise value per sample."
      )

  def _time(self, noise_labels: jax.Array) -> jax.Array:
    """TimestepEmbedder: 256 [cos, sin] frequencies, Linear-SiLU-Linear."""
    normal = nn.initializers.normal(0.02)
    emb = unet.sinusoidal_embedding(noise_labels, TIME_FREQUENCIES)
    emb = _dense(self.hidden, "t_embedder_mlp_0", jnp.float32, init=normal)(emb)
    return _dense(self.hidden, "t_embedder_mlp_2", jnp.float32, init=normal)(
      nn.silu(emb)
    )

  def _label(self, labels: jax.Array | None, batch: int) -> jax.Array:
    """LabelEmbedder's table row of each label (the null row for None)."""
    rows = self.num_classes + int(self.null_label)
    if rows == 0:
      return jnp.zeros((batch, self.hidden), jnp.float32)
    if labels is None:
      labels = jnp.full((batch,), self.num_classes, jnp.int32)
    table = self.param(
      "y_embedder_embedding_table",
      nn.initializers.normal(0.02),
      (rows, self.hidden),
    )
    return jnp.take(table, labels.astype(jnp.int32), axis=0)


def size(name: str) -> tuple[int, int, int]:
  """(depth, hidden, heads) of DiT-`name`, with the fix named on a typo."""
  if name not in SIZES:
    raise ValueError(
      f"model.dit.size={name!r} is unknown; choose one of {', '.join(SIZES)}"
    )
  return SIZES[name]
