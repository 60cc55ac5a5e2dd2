"""The Stable Diffusion KL-f8 autoencoder (AutoencoderKL) in Flax linen, NHWC.

This module owns the network; `vae_files.py` its on-disk format,
`convert_vae.py` turns diffusers weights into that format and
`autoencoder.py` runs it over a mesh.

Architecture (ALGORITHM.md §10; the VAE of `stabilityai/sd-vae-ft-ema`,
as diffusers' `AutoencoderKL` builds it):

* Encoder: 3x3 conv_in, one down block per entry of `block_out_channels`
  (`layers_per_block` resnets, then a stride-2 conv except in the last block),
  a mid block (resnet, single-head self-attention, resnet), GroupNorm + SiLU,
  3x3 conv_out to 2 * latent channels, then the 1x1 `quant_conv`.
* Posterior: a diagonal Gaussian (mean, log-variance clipped to [-30, 20]).
* Decoder: the 1x1 `post_quant_conv`, 3x3 conv_in, mid block, up blocks over
  the reversed widths (`layers_per_block + 1` resnets, then nearest 2x
  upsampling + 3x3 conv except in the last block), GroupNorm + SiLU, conv_out.
* All GroupNorms use eps 1e-6 (diffusers `resnet_eps=1e-6` in the VAE).

Parameter names mirror the diffusers state dict: the PyTorch key
`encoder.down_blocks.0.resnets.1.conv1.weight` is the Flax path
`encoder/down_blocks_0/resnets_1/conv1/kernel` (a list index joins its
parent name with "_"; `weight` is `kernel` for convs and dense layers and
`scale` for norms).
"""

import math
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

PyTree = Any

# The fields of `AutoencoderKL` that define its parameter shapes.
ARCH_FIELDS = (
  "in_channels",
  "out_channels",
  "block_out_channels",
  "layers_per_block",
  "latent_channels",
  "norm_num_groups",
)
# diffusers' VAE uses eps 1e-6 in every GroupNorm (models/autoencoders/vae.py).
_NORM_EPS = 1e-6
# diffusers' DiagonalGaussianDistribution clips the log-variance to this range.
_LOGVAR_RANGE = (-30.0, 20.0)


def _conv(features: int, size: int, name: str, dtype: Any, stride: int = 1):
  """A square conv; 'same' padding for stride 1, none for stride 2."""
  pad = size // 2 if stride == 1 else 0
  return nn.Conv(
    features,
    (size, size),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    dtype=dtype,
    name=name,
  )


def _norm(groups: int, name: str, dtype: Any) -> nn.GroupNorm:
  # Two-pass variance: the fast E[x^2] - E[x]^2 form loses the 1e-4 parity
  # with PyTorch on activations with a large mean.
  return nn.GroupNorm(
    num_groups=groups,
    epsilon=_NORM_EPS,
    use_fast_variance=False,
    dtype=dtype,
    name=name,
  )


class ResnetBlock(nn.Module):
  """norm-SiLU-conv twice plus a (1x1-projected if needed) skip connection."""

  out_channels: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.silu(_norm(self.groups, "norm1", self.dtype)(x))
    h = _conv(self.out_channels, 3, "conv1", self.dtype)(h)
    h = nn.silu(_norm(self.groups, "norm2", self.dtype)(h))
    h = _conv(self.out_channels, 3, "conv2", self.dtype)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, "conv_shortcut", self.dtype)(x)
    return x + h


class AttentionBlock(nn.Module):
  """Single-head self-attention over all pixels, with a residual connection.

  diffusers builds the VAE's attention with `attention_head_dim` equal to the
  channel count, i.e. one head of width C and logits scaled by 1/sqrt(C).
  """

  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    y = _norm(self.groups, "group_norm", self.dtype)(x)
    q = nn.Dense(c, dtype=self.dtype, name="to_q")(y)
    k = nn.Dense(c, dtype=self.dtype, name="to_k")(y)
    v = nn.Dense(c, dtype=self.dtype, name="to_v")(y)
    # Pixels stay on the (H, W) axes rather than being flattened into tokens:
    # a reshape of a batch-sharded array needs an explicit out_sharding under
    # meshes with Explicit axes (the jax.make_mesh default).
    logits = jnp.einsum("bhwc,bxyc->bhwxy", q, k) * c**-0.5
    # Softmax in float32, as diffusers' upcast_softmax does.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=(-2, -1))
    y = jnp.einsum("bhwxy,bxyc->bhwc", weights.astype(v.dtype), v)
    return x + nn.Dense(c, dtype=self.dtype, name="to_out_0")(y)


class MidBlock(nn.Module):
  """resnet, attention, resnet at the lowest resolution."""

  channels: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = ResnetBlock(self.channels, self.groups, self.dtype, name="resnets_0")(x)
    x = AttentionBlock(self.groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(
      self.channels, self.groups, self.dtype, name="resnets_1"
    )(x)


class Resample(nn.Module):
  """Halves (`up=False`) or doubles (`up=True`) H and W, then a 3x3 conv."""

  channels: int
  up: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.up:  # diffusers Upsample2D: nearest-neighbour 2x, then conv.
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      return _conv(self.channels, 3, "conv", self.dtype)(x)
    # diffusers Downsample2D(padding=0): pad right/bottom by one, then a
    # stride-2 conv without padding.
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return _conv(self.channels, 3, "conv", self.dtype, stride=2)(x)


class ResnetStack(nn.Module):
  """A down or up block: `num_layers` resnets, then optional resampling."""

  out_channels: int
  num_layers: int
  groups: int
  resample: str | None  # "down", "up" or None.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.num_layers):
      x = ResnetBlock(
        self.out_channels, self.groups, self.dtype, name=f"resnets_{j}"
      )(x)
    if self.resample is not None:
      up = self.resample == "up"
      name = "upsamplers_0" if up else "downsamplers_0"
      x = Resample(self.out_channels, up, self.dtype, name=name)(x)
    return x


class Encoder(nn.Module):
  """Images [B, H, W, C] -> moments [B, H/f, W/f, 2 * latent_channels]."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  latent_channels: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    widths = tuple(self.block_out_channels)
    x = _conv(widths[0], 3, "conv_in", self.dtype)(x)
    for i, width in enumerate(widths):
      x = ResnetStack(
        width,
        self.layers_per_block,
        self.groups,
        resample="down" if i < len(widths) - 1 else None,
        dtype=self.dtype,
        name=f"down_blocks_{i}",
      )(x)
    x = MidBlock(widths[-1], self.groups, self.dtype, name="mid_block")(x)
    x = nn.silu(_norm(self.groups, "conv_norm_out", self.dtype)(x))
    return _conv(2 * self.latent_channels, 3, "conv_out", self.dtype)(x)


class Decoder(nn.Module):
  """Latents [B, h, w, latent_channels] -> images [B, h*f, w*f, out]."""

  block_out_channels: Sequence[int]
  layers_per_block: int
  out_channels: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    widths = tuple(reversed(tuple(self.block_out_channels)))
    x = _conv(widths[0], 3, "conv_in", self.dtype)(z)
    x = MidBlock(widths[0], self.groups, self.dtype, name="mid_block")(x)
    for i, width in enumerate(widths):
      x = ResnetStack(
        width,
        self.layers_per_block + 1,
        self.groups,
        resample="up" if i < len(widths) - 1 else None,
        dtype=self.dtype,
        name=f"up_blocks_{i}",
      )(x)
    x = nn.silu(_norm(self.groups, "conv_norm_out", self.dtype)(x))
    return _conv(self.out_channels, 3, "conv_out", self.dtype)(x)


@flax.struct.dataclass
class DiagonalGaussian:
  """The encoder's posterior q(z | x) = N(mean, exp(logvar)), per element."""

  mean: jax.Array
  logvar: jax.Array

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    """A reparametrized draw mean + std * eps, eps ~ N(0, I)."""
    eps = jax.random.normal(key, self.mean.shape, self.mean.dtype)
    return self.mean + self.std * eps

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self) -> jax.Array:
    """KL(q || N(0, I)) per sample, summed over H, W, C."""
    terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
    return 0.5 * jnp.sum(terms, axis=(1, 2, 3))


def posterior_from_moments(moments: jax.Array) -> DiagonalGaussian:
  """Splits [..., 2L] moments into mean and clipped log-variance."""
  mean, logvar = jnp.split(moments, 2, axis=-1)
  return DiagonalGaussian(mean, jnp.clip(logvar, *_LOGVAR_RANGE))


class AutoencoderKL(nn.Module):
  """The SD VAE; the defaults are the SD KL-f8 config (sd-vae-ft-ema).

  Attributes:
    in_channels: image channels fed to the encoder.
    out_channels: image channels produced by the decoder.
    block_out_channels: width of each resolution level, highest first.
    layers_per_block: resnets per encoder level (the decoder has one more).
    latent_channels: channels of the latent z.
    norm_num_groups: GroupNorm groups everywhere.
    dtype: computation dtype (parameters stay float32).
  """

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  dtype: Any = jnp.float32

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)

  def setup(self):
    self.encoder = Encoder(
      self.block_out_channels,
      self.layers_per_block,
      self.latent_channels,
      self.norm_num_groups,
      self.dtype,
    )
    self.quant_conv = _conv(2 * self.latent_channels, 1, None, self.dtype)
    self.post_quant_conv = _conv(self.latent_channels, 1, None, self.dtype)
    self.decoder = Decoder(
      self.block_out_channels,
      self.layers_per_block,
      self.out_channels,
      self.norm_num_groups,
      self.dtype,
    )

  def encode(self, images: jax.Array) -> DiagonalGaussian:
    """Images [B, H, W, in_channels] in [-1, 1] -> posterior over latents."""
    check_images(images, self.in_channels, self.downsample_factor)
    return posterior_from_moments(self.quant_conv(self.encoder(images)))

  def decode(self, latents: jax.Array) -> jax.Array:
    """Unscaled latents [B, h, w, latent_channels] -> images, about [-1, 1]."""
    if latents.ndim != 4 or latents.shape[-1] != self.latent_channels:
      raise ValueError(
        f"latents have shape {tuple(latents.shape)}; expected [B, h, w,"
        f" {self.latent_channels}] (NHWC with {self.latent_channels} channels)."
      )
    return self.decoder(self.post_quant_conv(latents))

  def __call__(
    self, images: jax.Array, key: jax.Array | None = None
  ) -> jax.Array:
    """Reconstructs images through a posterior sample (mode if key is None)."""
    posterior = self.encode(images)
    z = posterior.mode() if key is None else posterior.sample(key)
    return self.decode(z)


def check_images(images: Any, channels: int = 3, factor: int = 8) -> None:
  """Raises a one-line ValueError unless images are [B, H, W, channels] NHWC.

  Args:
    images: an array (or anything with `.shape`).
    channels: the expected channel count (last axis).
    factor: H and W must be multiples of this (the VAE's downsampling).
  """
  shape = tuple(np.shape(images))
  if len(shape) != 4:
    raise ValueError(
      f"images have shape {shape}; expected rank 4: [B, H, W, {channels}]"
      " (NHWC)."
    )
  if shape[-1] != channels:
    raise ValueError(
      f"images have {shape[-1]} channels (shape {shape}); the VAE expects"
      f" {channels}: pass NHWC {'RGB ' if channels == 3 else ''}images."
    )
  if shape[1] % factor or shape[2] % factor:
    raise ValueError(
      f"image size {shape[1]}x{shape[2]} is not a multiple of {factor}; resize"
      f" or crop to a multiple of {factor} (the VAE downsamples by {factor})."
    )


def abstract_params(vae: AutoencoderKL) -> PyTree:
  """Shapes and dtypes of `vae`'s params, without allocating them."""
  size = vae.downsample_factor
  images = jax.ShapeDtypeStruct((1, size, size, vae.in_channels), jnp.float32)
  variables = jax.eval_shape(vae.init, jax.random.key(0), images)
  return variables["params"]


def random_params(vae: AutoencoderKL, seed: int = 0) -> PyTree:
  """Random float32 params drawn on the host (fast; for tests and benchmarks).

  Kernels ~ N(0, 1/fan_in) keep activations O(1) through the network; biases
  ~ N(0, 0.1^2) and norm scales ~ 1 + N(0, 0.1^2) are off their trivial values
  so that a mis-mapped parameter shows in a comparison.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flatten(abstract_params(vae)).items():
    shape = tuple(leaf.shape)
    if path.endswith("kernel"):
      value = rng.normal(size=shape) / math.sqrt(math.prod(shape[:-1]))
    else:
      value = 0.1 * rng.normal(size=shape) + path.endswith("scale")
    out[path] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(out, sep="/")


def param_count(vae: AutoencoderKL) -> int:
  """Number of scalar parameters, computed from shapes only."""
  leaves = jax.tree.leaves(abstract_params(vae))
  return sum(math.prod(leaf.shape) for leaf in leaves)


def flatten(params: PyTree) -> dict[str, Any]:
  """Nested params -> {"a/b/kernel": array}."""
  return traverse_util.flatten_dict(flax.core.unfreeze(params), sep="/")
