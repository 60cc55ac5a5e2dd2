"""InceptionV3 as used for FID (pytorch-fid's `fid_inception_v3`), in Flax.

This is the network of TensorFlow's 2015-12-05 Inception graph that
pytorch-fid ported (`pt_inception-2015-12-05-*.pth`), which the paper's
evaluation uses for FID (ALGORITHM.md §15). It is torchvision's InceptionV3
with 1008 classes, no auxiliary head and these FID-specific changes
(pytorch-fid `inception.py`, `FIDInception{A,C,E_1,E_2}`):

* the 3x3 average pools of the A, C and E blocks exclude the zero padding from
  their mean (TensorFlow's `avg_pool` semantics), and
* the pool branch of the last E block (Mixed_7c) uses a 3x3 *max* pool.

Input convention (that of pytorch-fid's `InceptionV3(resize_input=True,
normalize_input=True)`, but NHWC): float images in [0, 1] of any size, resized
bilinearly to 299x299 (half-pixel centres, i.e. `align_corners=False`, no
antialiasing) and mapped to [-1, 1]. The outputs are the 2048-d pool3 features
(final global average pool) and the 1008 logits of `fc`.

Submodule names equal torchvision's attribute names (`Mixed_5b/branch1x1/conv`,
`.../bn`, `fc`) so that weight conversion is a mechanical renaming; see
`ilct_jax/convert_inception.py`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FID_SIZE = 299  # Input side of the TF Inception graph (pytorch-fid).
MIN_SIZE = 75  # Smallest side the stem and reductions accept (torchvision).
POOL3_DIM = 2048
NUM_CLASSES = 1008  # The 2015-12-05 graph has 1008 outputs (pytorch-fid).
BN_EPS = 1e-3  # torchvision BasicConv2d: BatchNorm2d(eps=0.001).

PyTree = Any
_HIGHEST = jax.lax.Precision.HIGHEST


def resize_bilinear(images: jax.Array, size: int = FID_SIZE) -> jax.Array:
  """Bilinear resize of NHWC images to `size` x `size`.

  Equals `torch.nn.functional.interpolate(mode='bilinear',
  align_corners=False)` (no antialias): both sample at half-pixel centres and
  use the two nearest pixels, clamped at the border. jax's default
  `antialias=True` would widen the kernel when downsampling, so it is off.

  Args:
    images: [B, H, W, C] float array.
    size: output height and width.

  Returns:
    [B, size, size, C] float32 array.
  """
  images = images.astype(jnp.float32)
  if images.shape[1:3] == (size, size):
    return images  # Identity: interpolate at the same size is a no-op.
  shape = (images.shape[0], size, size, images.shape[3])
  return jax.image.resize(
    images, shape, method="bilinear", antialias=False, precision=_HIGHEST
  )


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (running statistics) -> ReLU.

  Attributes:
    features: output channels.
    kernel: (kh, kw).
    strides: stride in both spatial dimensions.
    padding: (ph, pw) symmetric zero padding.
    precision: matmul precision of the convolution.
  """

  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
      self.features,
      self.kernel,
      strides=(self.strides, self.strides),
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      precision=self.precision,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TF semantics: padded zeros do not count (pytorch-fid's FID patch).
  return nn.avg_pool(
    x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False
  )


def _max_pool_3x3(x: jax.Array, strides: int = 1) -> jax.Array:
  pad = ((1, 1), (1, 1)) if strides == 1 else "VALID"
  return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=pad)


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pool branches."""

  pool_features: int
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda *a, **k: BasicConv(*a, **k, precision=self.precision)
    b1 = conv(64, name="branch1x1")(x)
    b5 = conv(48, name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17 (torchvision's block, unpatched)."""

  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda *a, **k: BasicConv(*a, **k, precision=self.precision)
    b3 = conv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = conv(64, name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3(x, strides=2)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e: factorized 7x7 branches."""

  channels_7x7: int
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda *a, **k: BasicConv(*a, **k, precision=self.precision)
    c7 = self.channels_7x7
    row = dict(kernel=(1, 7), padding=(0, 3))
    col = dict(kernel=(7, 1), padding=(3, 0))
    b1 = conv(192, name="branch1x1")(x)
    b7 = conv(c7, name="branch7x7_1")(x)
    b7 = conv(c7, **row, name="branch7x7_2")(b7)
    b7 = conv(192, **col, name="branch7x7_3")(b7)
    bd = conv(c7, name="branch7x7dbl_1")(x)
    bd = conv(c7, **col, name="branch7x7dbl_2")(bd)
    bd = conv(c7, **row, name="branch7x7dbl_3")(bd)
    bd = conv(c7, **col, name="branch7x7dbl_4")(bd)
    bd = conv(192, **row, name="branch7x7dbl_5")(bd)
    bp = conv(192, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8 (torchvision's block, unpatched)."""

  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda *a, **k: BasicConv(*a, **k, precision=self.precision)
    b3 = conv(192, name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, strides=2)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c: expanded 3x3 branches; `max_pool` selects Mixed_7c's pool.

  Attributes:
    max_pool: if True the pool branch uses a 3x3 max pool (pytorch-fid's
      `FIDInceptionE_2`, a quirk of the TF graph), else an average pool that
      excludes padding (`FIDInceptionE_1`).
    precision: matmul precision of the convolutions.
  """

  max_pool: bool = False
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda *a, **k: BasicConv(*a, **k, precision=self.precision)
    row = dict(kernel=(1, 3), padding=(0, 1))
    col = dict(kernel=(3, 1), padding=(1, 0))
    b1 = conv(320, name="branch1x1")(x)
    b3 = conv(384, name="branch3x3_1")(x)
    b3a = conv(384, **row, name="branch3x3_2a")(b3)
    b3b = conv(384, **col, name="branch3x3_2b")(b3)
    bd = conv(448, name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bda = conv(384, **row, name="branch3x3dbl_3a")(bd)
    bdb = conv(384, **col, name="branch3x3dbl_3b")(bd)
    pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
    bp = conv(192, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3a, b3b, bda, bdb, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3, NHWC, returning pool3 features and logits.

  Attributes:
    resize_input: resize the input bilinearly to 299x299 (pytorch-fid's
      default). If False the input must be at least 75x75.
    normalize_input: map the input from [0, 1] to [-1, 1] (pytorch-fid's
      default). If False the input must already be in [-1, 1].
    num_classes: width of `fc` (1008 for the FID weights).
    precision: matmul precision; HIGHEST keeps float32 convolutions exact on
      GPUs (no TF32) and TPUs (no single-pass bf16).
  """

  resize_input: bool = True
  normalize_input: bool = True
  num_classes: int = NUM_CLASSES
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Runs the network.

    Args:
      images: [B, H, W, 3] float images in [0, 1] (see the attributes).

    Returns:
      {"pool3": [B, 2048] float32, "logits": [B, num_classes] float32}.
    """
    _check_input(images, self.resize_input)
    x = images.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x, FID_SIZE)
    if self.normalize_input:
      x = 2.0 * x - 1.0
    conv = lambda *a, **k: BasicConv(*a, **k, precision=self.precision)
    x = conv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = conv(80, name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    p = self.precision
    for name, pool_features in (("5b", 32), ("5c", 64), ("5d", 64)):
      x = InceptionA(pool_features, precision=p, name=f"Mixed_{name}")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    for name, c7 in (("6b", 128), ("6c", 160), ("6d", 160), ("6e", 192)):
      x = InceptionC(c7, precision=p, name=f"Mixed_{name}")(x)
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, precision=p, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))  # AdaptiveAvgPool2d((1, 1)).
    logits = nn.Dense(self.num_classes, precision=p, name="fc")(pool3)
    return {"pool3": pool3, "logits": logits}


def _check_input(images: jax.Array, resize_input: bool) -> None:
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
      f"InceptionV3 expects NHWC RGB images [B, H, W, 3], got shape "
      f"{tuple(images.shape)}; transpose NCHW input and convert to RGB."
    )
  if not resize_input and min(images.shape[1:3]) < MIN_SIZE:
    raise ValueError(
      f"InceptionV3 with resize_input=False needs H, W >= {MIN_SIZE}, got "
      f"{tuple(images.shape[1:3])}; enable resize_input or upsample."
    )


def init_variables(module: InceptionV3, seed: int = 0) -> PyTree:
  """Random variables {'params', 'batch_stats'} (tests and benchmarks only).

  Drawn with numpy from the shape tree: jitting Flax's own initializers for
  this 94-layer network takes ~20 s on a CPU, this takes ~1 s. Kernels are
  He-normal (std sqrt(2 / fan_in), so activations keep their scale through
  ReLUs), BatchNorm is the identity (scale 1, bias 0, mean 0, var 1) and the
  `fc` bias is 0.

  Args:
    module: the network.
    seed: numpy seed.

  Returns:
    The variables dict to pass to `module.apply`.
  """
  rng = np.random.default_rng(seed)

  def draw(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct) -> np.ndarray:
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      gain = 1.0 if len(leaf.shape) == 2 else 2.0  # Dense vs conv + ReLU.
      std = np.sqrt(gain / fan_in)
      return (std * rng.standard_normal(leaf.shape)).astype(np.float32)
    fill = 1.0 if name in ("scale", "var") else 0.0
    return np.full(leaf.shape, fill, np.float32)

  return jax.tree_util.tree_map_with_path(draw, variable_shapes(module))


def variable_shapes(module: InceptionV3) -> PyTree:
  """The shape/dtype tree of the variables, without computing them."""
  small = module.clone(resize_input=False)
  dummy = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  return jax.eval_shape(small.init, jax.random.PRNGKey(0), dummy)
