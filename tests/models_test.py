"""Tests for the consistency UNet and its normalization layers."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ilct_jax.models import attention, norms, unet

# Tiny UNet: 16x16 -> 8x8, attention (one 64-channel head) at 8x8 only.
TINY = dict(
  out_channels=4,
  model_channels=32,
  channel_mult=(1, 2),
  num_blocks=1,
  attn_resolutions=(8,),
)


def _tiny_inputs(batch=2, res=16, channels=4, seed=0):
  kx, kn = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, (batch, res, res, channels))
  # c_noise = 250 ln(sigma) for sigma in [0.002, 80] (ALGORITHM.md §1).
  sigma = jnp.exp(jax.random.uniform(kn, (batch,), minval=-6.2, maxval=4.4))
  return x, 250.0 * jnp.log(sigma)


def _perturb(params, scale=0.05, seed=1):
  """Adds Gaussian noise to every leaf (makes the zero-init convs non-zero)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [
    p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)
  ]
  return jax.tree.unflatten(treedef, leaves)


def _tiny_init(norm, abstract=False):
  model = unet.DhariwalUNet(norm=norm, **TINY)
  init = functools.partial(model.init, train=False)
  args = (jax.random.key(0), *_tiny_inputs())
  if abstract:
    return jax.eval_shape(init, *args)["params"]
  return jax.jit(init)(*args)["params"]


def _is_norm(path):
  return any("norm" in name for name in path)


@functools.cache
def _tiny_params(norm):
  """The tiny UNet's initial params for `norm`.

  GroupNorm (the baseline) and NsLN (the paper) are truly initialised. For
  the other norms, compiling a random init would cost ~6 s of CPU each, so
  their params are assembled: Flax draws every parameter from a key folded
  from its path, so all conv/dense leaves equal GroupNorm's (asserted for
  NsLN in `test_conv_and_dense_init_do_not_depend_on_the_norm`), and every
  norm starts at scale 1, bias 0 (checked in the norm tests below).
  """
  if norm in ("group", "nsln"):
    return _tiny_init(norm)
  group = traverse_util.flatten_dict(_tiny_params("group"))
  flat = traverse_util.flatten_dict(_tiny_init(norm, abstract=True))
  for path, leaf in flat.items():
    if _is_norm(path):
      flat[path] = jnp.full(leaf.shape, 1.0 if path[-1] == "scale" else 0.0)
    else:
      flat[path] = group[path]
  return traverse_util.unflatten_dict(flat)


@functools.cache
def _jit_apply(norm, dtype=jnp.float32, dropout=0.0, train=False):
  """A jitted apply of the tiny UNet, compiled once per configuration."""
  model = unet.DhariwalUNet(norm=norm, dtype=dtype, dropout=dropout, **TINY)

  def apply(params, x, labels, key=None):
    rngs = None if key is None else {"dropout": key}
    return model.apply({"params": params}, x, labels, train=train, rngs=rngs)

  return jax.jit(apply)


# ---------------------------------------------------------------------------
# UNet: shapes, zero-init output, naming, init, dropout, precision.


@pytest.mark.parametrize("norm", norms.NORMS)
def test_unet_output_shape_zero_at_init_and_nonzero_after_perturbing(norm):
  params = _tiny_params(norm)
  x, labels = _tiny_inputs()
  apply = _jit_apply(norm)
  y = apply(params, x, labels)
  assert y.shape == (2, 16, 16, 4)
  assert y.dtype == jnp.float32
  # out_conv is zero-initialised (weights and bias): the output is exactly 0.
  np.testing.assert_array_equal(np.asarray(y), 0.0)
  y = np.asarray(apply(_perturb(params), x, labels))
  assert np.all(np.isfinite(y))
  assert np.std(y) > 1e-3


def test_conv_and_dense_init_do_not_depend_on_the_norm():
  group = traverse_util.flatten_dict(_tiny_params("group"))
  nsln = traverse_util.flatten_dict(_tiny_params("nsln"))
  shared = {p for p in group if not _is_norm(p)}
  assert shared == {p for p in nsln if not _is_norm(p)}
  for path in shared:
    np.testing.assert_array_equal(np.asarray(group[path]), nsln[path])
  for path, leaf in nsln.items():
    if _is_norm(path):
      assert path[-1] == "bias"
      np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_unet_module_names_and_zero_init_layers():
  params = _tiny_params("group")
  expected = {
    "map_layer0", "map_layer1", "enc_16x16_conv", "enc_16x16_block0",
    "enc_8x8_down", "enc_8x8_block0", "dec_8x8_in0", "dec_8x8_in1",
    "dec_8x8_block0", "dec_8x8_block1", "dec_16x16_up", "dec_16x16_block0",
    "dec_16x16_block1", "out_norm", "out_conv",
  }  # fmt: skip
  assert set(params) == expected
  # Attention only at 8x8 (plus in0); 1x1 skip only where channels change.
  assert {"norm2", "qkv", "proj"} <= set(params["dec_8x8_in0"])
  assert "qkv" not in params["dec_8x8_in1"]
  assert "qkv" in params["enc_8x8_block0"]
  assert "qkv" in params["dec_8x8_block1"]
  assert "qkv" not in params["enc_16x16_block0"]
  assert "skip" in params["enc_8x8_block0"]  # 32 -> 64 channels.
  assert "skip" not in params["enc_8x8_down"]  # pure resample.
  assert params["dec_8x8_in0"]["qkv"]["kernel"].shape == (1, 1, 64, 192)
  for layer in (
    params["out_conv"],
    params["enc_8x8_block0"]["conv1"],
    params["dec_8x8_in0"]["proj"],
  ):
    np.testing.assert_array_equal(np.asarray(layer["kernel"]), 0.0)
    np.testing.assert_array_equal(np.asarray(layer["bias"]), 0.0)


def test_unet_init_is_uniform_with_fan_in_bound():
  """EDM: weights and biases ~ U(+-1/sqrt(fan_in)) (ALGORITHM.md §11a)."""
  params = _tiny_params("group")
  conv0 = params["dec_16x16_block0"]["conv0"]  # 3x3, 96 -> 32 channels.
  bound = 1.0 / math.sqrt(3 * 3 * 96)
  for leaf in (conv0["kernel"], conv0["bias"]):
    leaf = np.asarray(leaf)
    assert np.abs(leaf).max() <= bound
    assert np.abs(leaf).max() > 0.9 * bound
  affine = np.asarray(params["enc_16x16_block0"]["affine"]["kernel"])
  assert affine.shape == (128, 64)  # emb = 4 x 32, (scale, shift) x 32.
  assert np.abs(affine).max() <= 1.0 / math.sqrt(128)
  # Uniform variance bound^2 / 3.
  np.testing.assert_allclose(affine.var(), 1.0 / (3 * 128), rtol=0.05)


def test_unet_nsln_bias_shapes_follow_block_input_resolution():
  """ALGORITHM.md §11b: norm0 sees the block input (2r in down, r/2 in up)."""
  params = _tiny_params("nsln")
  shape = lambda block, norm: params[block][norm]["bias"].shape
  assert shape("enc_8x8_down", "norm0") == (16, 16, 32)
  assert shape("enc_8x8_down", "norm1") == (8, 8, 32)
  assert shape("dec_16x16_up", "norm0") == (8, 8, 64)
  assert shape("dec_16x16_up", "norm1") == (16, 16, 64)
  assert shape("dec_8x8_block0", "norm0") == (8, 8, 128)  # 64 + 64 skip.
  assert shape("dec_8x8_in0", "norm2") == (8, 8, 64)
  assert params["out_norm"]["bias"].shape == (16, 16, 32)
  flat = traverse_util.flatten_dict(params)
  assert not any("scale" in path for path in flat)


def test_unet_bfloat16_keeps_float32_params_and_output():
  params = _perturb(_tiny_params("nsln"))
  x, labels = _tiny_inputs()
  y16 = _jit_apply("nsln", dtype=jnp.bfloat16)(params, x, labels)
  y32 = _jit_apply("nsln")(params, x, labels)
  assert y16.dtype == jnp.float32
  rel = np.linalg.norm(y16 - y32) / np.linalg.norm(y32)
  assert rel < 0.05


def test_unet_dropout_uses_dropout_rng_only_in_train():
  params = _perturb(_tiny_params("group"))  # conv1 must be non-zero.
  x, labels = _tiny_inputs()
  train_apply = _jit_apply("group", dropout=0.5, train=True)
  y1 = train_apply(params, x, labels, jax.random.key(1))
  y1_again = train_apply(params, x, labels, jax.random.key(1))
  y2 = train_apply(params, x, labels, jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y1_again))
  assert np.abs(y1 - y2).max() > 1e-3
  # Eval: no rng needed, deterministic, and equal to the dropout-free model.
  eval_apply = _jit_apply("group", dropout=0.5)
  e1, e2 = eval_apply(params, x, labels), eval_apply(params, x, labels)
  np.testing.assert_array_equal(np.asarray(e1), np.asarray(e2))
  e0 = _jit_apply("group")(params, x, labels)
  np.testing.assert_array_equal(np.asarray(e1), np.asarray(e0))


def test_unet_rejects_bad_inputs_with_clear_messages():
  x, labels = _tiny_inputs(res=15)
  model = unet.DhariwalUNet(norm="group", **TINY)
  init = functools.partial(model.init, train=False)
  with pytest.raises(ValueError, match="multiples of 2\\*\\*\\(len"):
    jax.eval_shape(init, jax.random.key(0), x, labels)
  x, labels = _tiny_inputs()
  with pytest.raises(ValueError, match="noise_labels must have shape"):
    jax.eval_shape(init, jax.random.key(0), x, jnp.zeros((3,)))
  narrow = unet.DhariwalUNet(norm="group", **{**TINY, "model_channels": 16})
  init = functools.partial(narrow.init, train=False)
  with pytest.raises(ValueError, match="model.head_channels=64, got 32"):
    jax.eval_shape(init, jax.random.key(0), x, labels)


# ---------------------------------------------------------------------------
# UNet pieces against closed forms.


def test_noise_embedding_matches_closed_form_cos_first():
  labels = np.array([-1553.7, -173.3, 0.0, 1.0, 1095.5], np.float32)
  emb = np.asarray(unet.sinusoidal_embedding(jnp.asarray(labels), 128))
  k = np.arange(64, dtype=np.float64)
  args = labels[:, None].astype(np.float64) * (1.0 / 10000) ** (k / 64)
  expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)
  assert emb.shape == (5, 128)
  # |args| reaches ~1.6e3: float32 rounding of the argument is ~1e-4.
  np.testing.assert_allclose(emb, expected, atol=5e-4)
  np.testing.assert_array_equal(emb[2], np.r_[np.ones(64), np.zeros(64)])
  # Lowest frequency is 10000^(-63/64), no endpoint.
  np.testing.assert_allclose(emb[3, 63], math.cos(10000 ** (-63 / 64)))


def test_attention_matches_per_head_loop_with_edm_channel_layout():
  heads, head_ch, res = 2, 8, 4
  qkv = np.random.default_rng(0).normal(size=(2, res, res, 3 * heads * head_ch))
  out = np.asarray(attention.multihead(jnp.asarray(qkv, jnp.float32), heads))
  # EDM layout: channel index = (head * head_ch + c) * 3 + {0: q, 1: k, 2: v}.
  t = qkv.reshape(2, res * res, heads, head_ch, 3)
  expected = np.zeros((2, res * res, heads, head_ch))
  for b in range(2):
    for h in range(heads):
      q, k, v = t[b, :, h, :, 0], t[b, :, h, :, 1], t[b, :, h, :, 2]
      logits = q @ k.T / math.sqrt(head_ch)
      w = np.exp(logits - logits.max(axis=1, keepdims=True))
      expected[b, :, h] = (w / w.sum(axis=1, keepdims=True)) @ v
  np.testing.assert_allclose(
    out, expected.reshape(2, res, res, heads * head_ch), atol=1e-5
  )


def test_resampling_is_average_pool_and_nearest():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  down = np.asarray(unet._downsample(jnp.asarray(x)))
  expected = x.reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(down, expected)
  up = np.asarray(unet._upsample(jnp.asarray(x)))
  np.testing.assert_array_equal(up, x.repeat(2, axis=1).repeat(2, axis=2))


# ---------------------------------------------------------------------------
# Parameter counts of the paper's CelebA UNet (eval_shape: no allocation).

CELEBA = dict(
  out_channels=4,
  model_channels=128,
  channel_mult=(1, 2, 3, 4),
  num_blocks=4,
  attn_resolutions=(16, 8),
)


def _analytic_param_count(norm, mc=128, mult=(1, 2, 3, 4), nb=4, res=32):
  """Independent count for CELEBA: sum of conv/dense/norm sizes per block."""
  emb = 4 * mc
  conv = lambda ci, co, k: ci * co * k * k + co
  dense = lambda fi, fo: fi * fo + fo
  norm_size = {
    "nsln": lambda c, r: c * r * r,  # per-element bias only
    "group": lambda c, r: 2 * c,
    "layer": lambda c, r: 2 * c * r * r,
  }[norm]

  def block(ci, co, r_in, r_out, attn):
    n = norm_size(ci, r_in) + conv(ci, co, 3) + dense(emb, 2 * co)
    n += norm_size(co, r_out) + conv(co, co, 3)
    n += conv(ci, co, 1) if ci != co else 0
    if attn:
      n += norm_size(co, r_out) + conv(co, 3 * co, 1) + conv(co, co, 1)
    return n

  total = dense(mc, emb) + dense(emb, emb) + conv(4, mc, 3)
  skips, c = [mc], mc
  for level, m in enumerate(mult):
    r = res >> level
    if level:
      total += block(c, c, 2 * r, r, False)
      skips.append(c)
    for _ in range(nb):
      total += block(c, mc * m, r, r, r in (16, 8))
      c = mc * m
      skips.append(c)
  for level, m in reversed(list(enumerate(mult))):
    r = res >> level
    if level == len(mult) - 1:
      total += block(c, c, r, r, True) + block(c, c, r, r, False)
    else:
      total += block(c, c, r // 2, r, False)
    for _ in range(nb + 1):
      ci = c + skips.pop()
      total += block(ci, mc * m, r, r, r in (16, 8))
      c = mc * m
  return total + norm_size(c, res) + conv(c, 4, 3)


def _celeba_param_shapes(norm):
  model = unet.DhariwalUNet(norm=norm, **CELEBA)
  init = functools.partial(model.init, train=False)
  x, labels = jnp.zeros((1, 32, 32, 4)), jnp.zeros((1,))
  return jax.eval_shape(init, jax.random.key(0), x, labels)["params"]


def _norm_param_count(params):
  flat = jax.tree_util.tree_leaves_with_path(params)
  return sum(
    int(np.prod(leaf.shape))
    for path, leaf in flat
    if "norm" in jax.tree_util.keystr(path)
  )


def test_celeba_unet_param_count_nsln():
  # Measured: 158,355,972 params, of which 7,112,704 are NsLN biases
  # (ALGORITHM.md §11a: ~158M with ~7.1M LN biases). The analytic count below
  # gives the same 158,355,972.
  params = _celeba_param_shapes("nsln")
  assert unet.count_params(params) == 158_355_972
  assert _norm_param_count(params) == 7_112_704
  assert _analytic_param_count("nsln") == 158_355_972


def test_celeba_unet_param_count_group_norm():
  # Measured: 151,325,956 params, 82,688 of them GroupNorm scale/bias.
  # The analytic count below gives the same 151,325,956.
  params = _celeba_param_shapes("group")
  assert unet.count_params(params) == 151_325_956
  assert _norm_param_count(params) == 82_688
  assert _analytic_param_count("group") == 151_325_956
  # Only the norms differ between the variants.
  assert 151_325_956 - 82_688 == 158_355_972 - 7_112_704


# ---------------------------------------------------------------------------
# Normalization layers.


def _norm_input(shape=(3, 4, 5, 8), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=shape) * 3.0 + 1.5).astype(np.float32)


def _init_and_perturb(module, x):
  params = module.init(jax.random.key(0), jnp.asarray(x))["params"]
  return _perturb(params, scale=0.5, seed=3)


def test_nsln_has_no_scale_full_bias_and_standardizes_each_sample():
  x = _norm_input()
  module = norms.make_norm("nsln")
  params = module.init(jax.random.key(0), jnp.asarray(x))["params"]
  assert set(params) == {"bias"}
  assert params["bias"].shape == (4, 5, 8)
  np.testing.assert_array_equal(np.asarray(params["bias"]), 0.0)
  params = _perturb(params, scale=0.5, seed=3)
  y = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  before_bias = (y - np.asarray(params["bias"])).reshape(3, -1)
  np.testing.assert_allclose(before_bias.mean(axis=1), 0.0, atol=1e-5)
  # var = 1 - eps / (var_x + eps) exactly; var_x ~ 9 here.
  np.testing.assert_allclose(before_bias.var(axis=1), 1.0, atol=1e-5)


def test_nsln_works_on_any_shape_and_computes_stats_in_float32():
  module = norms.make_norm("nsln", dtype=jnp.bfloat16)
  x = jnp.asarray(_norm_input((2, 3, 7, 5))) + 1000.0  # big offset
  params = module.init(jax.random.key(0), x.astype(jnp.bfloat16))["params"]
  assert params["bias"].shape == (3, 7, 5)
  assert params["bias"].dtype == jnp.float32
  y = module.apply({"params": params}, x)
  assert y.dtype == jnp.bfloat16
  expected = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / jnp.sqrt(
    x.var(axis=(1, 2, 3), keepdims=True) + 1e-5
  )
  np.testing.assert_allclose(
    np.asarray(y, np.float32), np.asarray(expected), atol=2e-2
  )


def _standardize_np(x, axes, eps=1e-5):
  x = x.astype(np.float64)
  mean = x.mean(axis=axes, keepdims=True)
  var = x.var(axis=axes, keepdims=True)
  return (x - mean) / np.sqrt(var + eps)


def test_group_norm_matches_closed_form_with_edm_group_count():
  x = _norm_input((2, 3, 3, 24))  # min(32, 24 // 4) = 6 groups of 4.
  module = norms.make_norm("group")
  params = _init_and_perturb(module, x)
  assert params["scale"].shape == params["bias"].shape == (24,)
  y = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  grouped = _standardize_np(x.reshape(2, 3, 3, 6, 4), (1, 2, 4))
  expected = grouped.reshape(x.shape) * np.asarray(
    params["scale"]
  ) + np.asarray(params["bias"])
  np.testing.assert_allclose(y, expected, atol=1e-5)
  # 256 channels -> 32 groups of 8 (the cap of 32 applies).
  x = _norm_input((1, 2, 2, 256))
  y = np.asarray(module.apply(module.init(jax.random.key(0), x), x))
  expected = _standardize_np(x.reshape(1, 2, 2, 32, 8), (1, 2, 4))
  np.testing.assert_allclose(y, expected.reshape(x.shape), atol=1e-5)


def test_layer_norm_matches_closed_form():
  x = _norm_input()
  module = norms.make_norm("layer")
  params = _init_and_perturb(module, x)
  assert params["scale"].shape == params["bias"].shape == (4, 5, 8)
  y = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  expected = _standardize_np(x, (1, 2, 3)) * np.asarray(
    params["scale"]
  ) + np.asarray(params["bias"])
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_rms_norm_matches_closed_form():
  x = _norm_input()
  module = norms.make_norm("rms")
  params = _init_and_perturb(module, x)
  assert set(params) == {"scale"}
  assert params["scale"].shape == (4, 5, 8)
  y = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  # torch's nn.RMSNorm(eps=None) uses float32's machine epsilon.
  assert norms.RMS_EPS == np.finfo(np.float32).eps
  ms = np.mean(x.astype(np.float64) ** 2, axis=(1, 2, 3), keepdims=True)
  expected = x / np.sqrt(ms + norms.RMS_EPS) * np.asarray(params["scale"])
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_instance_norm_matches_closed_form():
  x = _norm_input()
  module = norms.make_norm("instance")
  params = _init_and_perturb(module, x)
  assert params["scale"].shape == params["bias"].shape == (8,)
  y = np.asarray(module.apply({"params": params}, jnp.asarray(x)))
  expected = _standardize_np(x, (1, 2)) * np.asarray(
    params["scale"]
  ) + np.asarray(params["bias"])
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_make_norm_returns_fresh_modules_and_rejects_unknown_names():
  assert norms.make_norm("nsln") is not norms.make_norm("nsln")
  with pytest.raises(
    ValueError,
    match="model.norm='foo' is unknown; choose one of "
    "nsln, group, layer, rms, instance",
  ):
    norms.make_norm("foo")
  model = unet.DhariwalUNet(norm="batch", **TINY)
  with pytest.raises(ValueError, match="model.norm='batch' is unknown"):
    jax.eval_shape(
      functools.partial(model.init, train=False),
      jax.random.key(0),
      *_tiny_inputs(),
    )


def test_group_norm_rejects_indivisible_channels():
  module = norms.make_norm("group")
  with pytest.raises(ValueError, match="cannot split 18 channels"):
    module.init(jax.random.key(0), jnp.zeros((1, 2, 2, 18)))
