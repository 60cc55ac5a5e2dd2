"""The UNet's hand-written kernels equal the plain formulas they replace.

`norms._normalize` has its own backward and `conv.Conv2d` picks a GEMM form
for 1x1 and small-map 3x3 convolutions (speed on XLA:CPU, see their
docstrings). These tests pin values and gradients against the textbook
forms, computed by autodiff, so a faster kernel can never change the model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilct_jax.models import attention, norms
from ilct_jax.models import conv as conv_lib


def _plain_norm(x, scale, bias, groups, eps, center):
  """The closed form by jnp + autodiff: stats per sample and channel group."""
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  axes = (1, 2, 4)
  if center:
    g = g - g.mean(axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(g), axis=axes, keepdims=True)
  y = (g * jax.lax.rsqrt(var + eps)).reshape(x.shape)
  if scale is not None:
    y = y * scale
  if bias is not None:
    y = y + bias
  return y


# (groups, center, scale shape or None, bias shape or None) per norm kind.
KINDS = {
  "nsln": (1, True, None, "map"),
  "layer": (1, True, "map", "map"),
  "rms": (1, False, "map", None),
  "instance": (8, True, "channel", "channel"),
  "group": (2, True, "channel", "channel"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_normalize_value_and_gradients_equal_autodiff_of_closed_form(kind):
  groups, center, scale_kind, bias_kind = KINDS[kind]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(2.0, 3.0, (3, 4, 5, 8)), jnp.float32)
  shapes = {"map": (4, 5, 8), "channel": (8,), None: None}

  def param(kind_, seed):
    if kind_ is None:
      return None
    r = np.random.default_rng(seed)
    return jnp.asarray(r.normal(1.0, 0.5, shapes[kind_]), jnp.float32)

  scale, bias = param(scale_kind, 1), param(bias_kind, 2)
  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def loss(fn):
    def f(x, scale, bias):
      return jnp.sum(weights * fn(x, scale, bias))

    return f

  fast = loss(
    lambda x, s, b: norms._normalize(x, s, b, groups, 1e-5, center, x.dtype)
  )
  plain = loss(lambda x, s, b: _plain_norm(x, s, b, groups, 1e-5, center))
  np.testing.assert_allclose(
    fast(x, scale, bias), plain(x, scale, bias), rtol=1e-5
  )
  argnums = tuple(i for i, a in enumerate((x, scale, bias)) if a is not None)
  g_fast = jax.grad(fast, argnums)(x, scale, bias)
  g_plain = jax.grad(plain, argnums)(x, scale, bias)
  for a, b in zip(g_fast, g_plain):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_normalize_keeps_input_dtype_for_its_gradient():
  x = jnp.ones((2, 2, 2, 4), jnp.bfloat16) * jnp.arange(4, dtype=jnp.bfloat16)
  g = jax.grad(
    lambda x: jnp.sum(norms._normalize(x, None, None, 1, 1e-5, True, x.dtype))
  )(x)
  assert g.dtype == jnp.bfloat16


def _conv_reference(x, kernel, bias):
  y = jax.lax.conv_general_dilated(
    x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return y + bias


@pytest.mark.parametrize(
  "k,shape,features",
  [
    (3, (2, 2, 2, 6), 16),  # B*H*W = 8 <= 16: the im2col GEMM on CPU.
    (3, (2, 6, 6, 5), 7),  # 72 > 7: lax.conv.
    (1, (2, 3, 3, 6), 5),  # 1x1: a channel GEMM.
  ],
)
@pytest.mark.parametrize("form", ["cpu", "xla"])
def test_conv2d_equals_lax_conv_in_value_and_gradients(
  k, shape, features, form
):
  rng = np.random.default_rng(k + features)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  module = conv_lib.Conv2d(
    features,
    k,
    kernel_init=nn.initializers.normal(0.5),
    bias_init=nn.initializers.normal(0.5),
    form=form,  # model.kernels.conv: XLA:CPU's forms or lax.conv alone.
  )
  params = module.init(jax.random.key(0), x)["params"]
  # Same parameters as the nn.Conv it stands in for: names, shapes, dtype.
  conv = nn.Conv(features, (k, k), padding="SAME")
  ref_shapes = jax.tree.map(
    lambda a: (a.shape, a.dtype), conv.init(jax.random.key(0), x)["params"]
  )
  assert jax.tree.map(lambda a: (a.shape, a.dtype), params) == ref_shapes
  if k == 3:
    assert conv_lib.use_im2col(x, features) == (features == 16)
  weights = jnp.asarray(rng.normal(size=(*shape[:3], features)), jnp.float32)

  def fast(p, x):
    return jnp.sum(weights * module.apply({"params": p}, x))

  def plain(p, x):
    return jnp.sum(weights * _conv_reference(x, p["kernel"], p["bias"]))

  np.testing.assert_allclose(fast(params, x), plain(params, x), rtol=1e-5)
  g_fast = jax.grad(fast, (0, 1))(params, x)
  g_plain = jax.grad(plain, (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_im2col_conv_equals_lax_conv_at_5x5():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(1, 3, 4, 2)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(5, 5, 2, 3)), jnp.float32)
  np.testing.assert_allclose(
    conv_lib.im2col_conv(x, kernel),
    _conv_reference(x, kernel, 0.0),
    rtol=1e-5,
    atol=1e-5,
  )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_late_grad_conv_has_the_plain_convs_value_and_gradients(dtype):
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 5)), dtype)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 5, 7)), dtype)
  weights = jnp.asarray(rng.normal(size=(2, 6, 6, 7)), dtype)

  def loss(conv):
    return lambda x, k: jnp.sum(weights * conv(x, k)).astype(jnp.float32)

  late, plain = loss(conv_lib.conv_late_grad), loss(conv_lib.conv_same)
  np.testing.assert_array_equal(late(x, kernel), plain(x, kernel))
  g_late = jax.jit(jax.grad(late, (0, 1)))(x, kernel)
  g_plain = jax.jit(jax.grad(plain, (0, 1)))(x, kernel)
  for a, b in zip(g_late, g_plain):
    assert a.dtype == b.dtype == dtype
    np.testing.assert_array_equal(a, b)  # The same ops: bit-identical.


@pytest.mark.skipif(
  jax.default_backend() != "cpu",
  reason="the scheduling it corrects is XLA:CPU's (conv form 'cpu' only)",
)
def test_late_grad_conv_lowers_the_backward_temp_memory_on_cpu():
  # Six 3x3 convs with SiLU between: XLA:CPU makes the transposed gradient
  # copies of the plain form in the forward pass and holds them; the late
  # form makes them when the backward needs them.
  x = jnp.ones((4, 16, 16, 32))
  kernels = [jnp.full((3, 3, 32, 32), 0.01)] * 6

  def temp_bytes(conv):
    def loss(ks, x):
      for k in ks:
        x = jax.nn.silu(conv(x, k))
      return jnp.sum(x * x)

    compiled = jax.jit(jax.grad(loss)).lower(kernels, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  late, plain = (
    temp_bytes(conv_lib.conv_late_grad),
    temp_bytes(conv_lib.conv_same),
  )
  assert late < plain, (late, plain)


def _plain_attention(qkv, heads):
  """EDM's attention by jnp + autodiff (softmax weights kept for backward)."""
  b, h, w, c3 = qkv.shape
  d = c3 // (3 * heads)
  qkv = qkv.reshape(b, h * w, heads, d, 3)
  q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
  f32 = jnp.float32
  logits = jnp.einsum("bqhc,bkhc->bhqk", q.astype(f32), k.astype(f32))
  weights = jax.nn.softmax(logits / np.sqrt(d), axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhc->bqhc", weights, v).reshape(b, h, w, heads * d)


@pytest.mark.parametrize(
  "dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)]
)
def test_attention_value_and_gradient_equal_autodiff_of_the_formula(dtype, tol):
  rng = np.random.default_rng(3)
  heads, d = 3, 8
  qkv = jnp.asarray(rng.normal(0.0, 2.0, (2, 4, 5, 3 * heads * d)), dtype)
  weights = jnp.asarray(rng.normal(size=(2, 4, 5, heads * d)), dtype)

  def loss(fn):
    return lambda x: jnp.sum((weights * fn(x, heads)).astype(jnp.float32))

  fast, plain = loss(attention.multihead), loss(_plain_attention)
  out_fast, out_plain = (
    attention.multihead(qkv, heads),
    _plain_attention(qkv, heads),
  )
  assert out_fast.dtype == dtype
  np.testing.assert_allclose(
    np.asarray(out_fast, np.float32),
    np.asarray(out_plain, np.float32),
    rtol=tol,
    atol=tol,
  )
  g_fast, g_plain = jax.grad(fast)(qkv), jax.grad(plain)(qkv)
  assert g_fast.dtype == dtype
  scale = float(jnp.abs(g_plain.astype(jnp.float32)).max())
  np.testing.assert_allclose(
    np.asarray(g_fast, np.float32),
    np.asarray(g_plain, np.float32),
    rtol=tol,
    atol=tol * scale,
  )
