"""The UNet's convolutions and dense layers: EDM's init, the kernel forms.

`Conv2d` is a stride-1 'same' convolution whose form follows
`model.kernels.conv` (ilct_jax/kernels.py): "xla" is `lax.conv` for every
kernel; "cpu" takes the forms tuned for XLA:CPU (a 1x1 kernel as a channel
GEMM, a small map's 3x3 kernel as one im2col GEMM, the others with their
gradient copies made in the backward pass). `make_conv` and `make_dense`
build them with EDM's initialization (ALGORITHM.md 11a).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

PyTree = Any


def fan_in_uniform(fan_in: int) -> nn.initializers.Initializer:
  """U(+-1/sqrt(fan_in)): EDM's kaiming_uniform x sqrt(1/3) (ALGORITHM 11a).

  EDM applies it to weights and biases alike, both with the layer's fan-in.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A stride-1 'same' KxK conv as one GEMM over the K*K shifted copies of x.

  Used where the activations are small next to the kernel (the 4x4 levels of
  the paper UNet at small batch): XLA:CPU's convolution backward first
  copies the whole kernel into a flipped, in/out-swapped layout, which there
  costs more than the convolution itself; a GEMM reads the kernel in place
  for the forward, the input gradient and the kernel gradient alike.
  """
  b, h, w, cin = x.shape
  k = kernel.shape[0]
  pad = k // 2
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  patches = jnp.concatenate(
    [xp[:, i : i + h, j : j + w, :] for i in range(k) for j in range(k)],
    axis=-1,
  )  # [B, H, W, K*K*Cin], ordered (kh, kw, cin) as the HWIO kernel.
  kernel = kernel.reshape(k * k * cin, kernel.shape[-1])
  return jax.lax.dot_general(patches, kernel, (((3,), (0,)), ((), ())))


def use_im2col(x: jax.Array, features: int) -> bool:
  """Whether a 3x3 conv of x is cheaper as `im2col_conv` (conv="cpu" only).

  True where the patch matrix (B*H*W x 9*Cin) is no bigger than the kernel
  (9*Cin x Cout), i.e. B*H*W <= Cout: the im2col copy then costs at most
  what the kernel transpose it replaces did. GPU and TPU backends fold the
  kernel flip into their convolution kernels, so they keep lax.conv
  (`kernels.AUTO`).
  """
  b, h, w, _ = x.shape
  return b * h * w <= features


def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """nn.Conv's stride-1 'same' NHWC/HWIO convolution call."""
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@jax.custom_vjp
def conv_late_grad(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`conv_same` whose gradient copies are made in the backward pass.

  XLA:CPU takes a convolution's kernel gradient from a transposed copy of
  its input ([C, H, W, B]) and its input gradient from a flipped,
  in/out-swapped copy of the kernel. Both depend on forward values only, so
  its scheduler makes them during the forward pass and keeps them through
  the peak at the start of the backward: 386 MiB of copies in the paper
  UNet step at batch 8 (XLA's live-range dump). The backward here adds
  0 * (one element of the output gradient) to the input and the kernel
  before differentiating the same call, which makes the copies wait for
  the backward without changing a value (a non-finite output gradient
  makes the gradients non-finite either way, and the step skips them,
  ALGORITHM.md §8). Temp memory of that step: 1354 -> 1179 MiB.
  """
  return conv_same(x, kernel)


def _late_grad_fwd(x, kernel):
  return conv_same(x, kernel), (x, kernel)


def _late_grad_bwd(res, dy):
  x, kernel = res
  zero = 0.0 * dy[0, 0, 0, 0]
  x, kernel = x + zero.astype(x.dtype), kernel + zero.astype(kernel.dtype)
  return jax.vjp(conv_same, x, kernel)[1](dy)


conv_late_grad.defvjp(_late_grad_fwd, _late_grad_bwd)


class Conv2d(nn.Module):
  """EDM's Conv2d at stride 1, 'same' padding, NHWC input, HWIO kernel.

  Parameters and initialisation are those of `nn.Conv(features, (k, k),
  padding="SAME")` (`kernel` [k, k, Cin, Cout] then `bias` [Cout], in that
  order, float32), so checkpoints and init values are unchanged. With
  `form="xla"` every convolution is `lax.conv_general_dilated` (exactly
  nn.Conv's call). With `form="cpu"` (the XLA:CPU forms, `ilct_jax.kernels`)
  the computation picks the fastest equivalent form there: a channel GEMM for
  1x1 kernels (XLA:CPU differentiates a 1x1 convolution into a slow
  kernel-gradient convolution), `im2col_conv` where `use_im2col` says so,
  and elsewhere the convolution with its gradient copies held back to the
  backward pass (`conv_late_grad`).

  Attributes:
    features: output channels.
    kernel_size: k (1 or an odd size).
    kernel_init: initializer of the kernel.
    bias_init: initializer of the bias.
    dtype: computation dtype (params stay float32).
    form: `kernels.Kernels.conv`: "cpu" or "xla".
  """

  features: int
  kernel_size: int
  kernel_init: nn.initializers.Initializer
  bias_init: nn.initializers.Initializer
  dtype: Any = jnp.float32
  form: str = "cpu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param(
      "kernel", self.kernel_init, (k, k, cin, self.features), jnp.float32
    )
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    if self.form == "xla":
      y = conv_same(x, kernel)
    elif k == 1:
      y = jax.lax.dot_general(
        x, kernel.reshape(cin, self.features), (((3,), (0,)), ((), ()))
      )
    elif use_im2col(x, self.features):
      y = im2col_conv(x, kernel)
    else:
      y = conv_late_grad(x, kernel)
    return y + bias.reshape(1, 1, 1, -1)


def make_conv(
  features: int,
  kernel: int,
  fan_in_channels: int,
  dtype: Any,
  name: str,
  zero: bool = False,
  form: str = "cpu",
) -> Conv2d:
  """A stride-1 'same' conv with EDM's init (zero for conv1/proj/out_conv)."""
  init = (
    nn.initializers.zeros
    if zero
    else fan_in_uniform(fan_in_channels * kernel * kernel)
  )
  return Conv2d(
    features,
    kernel,
    kernel_init=init,
    bias_init=init,
    dtype=dtype,
    form=form,
    name=name,
  )


def make_dense(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  init = fan_in_uniform(fan_in)
  return nn.Dense(
    features, kernel_init=init, bias_init=init, dtype=dtype, name=name
  )
