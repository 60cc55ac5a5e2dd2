"""flops.py: analytic FLOP counts on layers with known answers, the train
step's 4-forward rule, peak lookup, and the benchmark's accounting keys."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilct_jax import state as state_lib
from ilct_jax.lab import flops


def test_dense_and_conv_flops_are_two_per_multiply_add():
  x = jax.ShapeDtypeStruct((5, 7), jnp.float32)
  w = jax.ShapeDtypeStruct((7, 3), jnp.float32)
  assert flops.matmul_flops(jnp.dot, x, w) == 2 * 5 * 7 * 3
  conv = nn.Conv(6, (3, 3), padding="SAME")
  img = jnp.zeros((2, 8, 8, 4))
  params = conv.init(jax.random.key(0), img)
  # Per output element: 3*3*4 multiply-adds; 2*8*8*6 outputs.
  assert flops.matmul_flops(conv.apply, params, img) == 2 * (2 * 8 * 8 * 6) * (
    3 * 3 * 4
  )
  # Elementwise work is not counted; a vjp adds two products per matmul.
  assert flops.matmul_flops(lambda a: jnp.tanh(a) * 2, img) == 0
  grad = jax.grad(lambda a, b: jnp.sum(jnp.dot(a, b)), argnums=(0, 1))
  assert flops.matmul_flops(grad, x, w) == 3 * 2 * 5 * 7 * 3


def test_counts_inside_jit_and_custom_vjp_bodies():
  w = jnp.ones((4, 4))

  @jax.custom_vjp
  def f(a):
    return a @ w

  f.defvjp(lambda a: (a @ w, None), lambda _, g: (g @ w.T,))
  inner = jax.jit(lambda a: f(a) @ w)
  assert flops.matmul_flops(inner, jnp.ones((2, 4))) == 2 * (2 * 2 * 4 * 4)


def test_train_step_is_four_forwards_of_the_tiny_unet(tiny_config):
  model = state_lib.create_model(tiny_config)
  shape = state_lib.example_shape(tiny_config)
  fwd = flops.forward_flops_per_example(model, shape)
  assert fwd > 0
  assert flops.train_step_flops_per_example(model, shape) == 4 * fwd
  # Batch 1 vs batch 3 of the same forward: FLOPs scale with the batch.
  x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
  n = jax.ShapeDtypeStruct((3,), jnp.float32)
  params = jax.eval_shape(
    lambda x, n: model.init(jax.random.key(0), x, n, train=False)["params"],
    x,
    n,
  )
  apply = lambda p, x, n: model.apply({"params": p}, x, n, train=False)
  assert flops.matmul_flops(apply, params, x, n) == pytest.approx(3 * fwd)


@pytest.mark.parametrize(
  "kind,dtype,tflops",
  [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
    ("NVIDIA H200", "float32", 494.7),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312.0),
    ("TPU v5 lite", "bfloat16", 197.0),
    ("TPU v4", "float32", 275.0),
  ],
)
def test_peak_flops_from_the_device_kind(kind, dtype, tflops):
  device = types.SimpleNamespace(platform="gpu", device_kind=kind)
  peak, source = flops.peak_flops(device, dtype)
  assert peak == tflops * 1e12 and dtype in source


def test_unknown_device_has_no_peak_and_cpu_an_estimate():
  device = types.SimpleNamespace(platform="gpu", device_kind="Quantum Q1")
  peak, source = flops.peak_flops(device, "float32")
  assert np.isnan(peak) and "Quantum Q1" in source
  peak, source = flops.peak_flops(jax.devices("cpu")[0], "float32")
  assert peak > 1e9 and "FLOP/cycle" in source


def test_memory_estimate_allocates_nothing_and_reports_the_step(tiny_config):
  figures = flops.memory_estimate(tiny_config)
  model = state_lib.create_model(tiny_config)
  per_image = flops.train_step_flops_per_example(
    model, state_lib.example_shape(tiny_config)
  )
  assert figures["model_gflop_per_step"] == pytest.approx(
    per_image * tiny_config.train.batch_size / 1e9
  )
  # XLA's own count of the whole step is within 25% of the analytic
  # convolution + matmul count (it adds elementwise work, and counts some
  # fused products differently).
  ratio = figures["xla_gflop_per_step"] / figures["model_gflop_per_step"]
  assert 0.75 < ratio < 1.25
  assert figures["args_mib"] > 0 and figures["temp_mib"] > 0


def test_paper_run_projection_is_steps_over_steps_per_second():
  rows = flops.project_paper_runs(achieved_flops=1e15)
  celeba = rows["celeba"]
  # 27,000 // 128 * 1400 = 294,000 steps (ALGORITHM.md §13).
  assert celeba["steps"] == 294_000
  assert celeba["days"] == pytest.approx(
    celeba["steps"] / celeba["steps_per_s"] / 86400
  )
  # 113.2 GFLOP per image (4 forwards of 28.3) x 128 at 1 PFLOP/s.
  assert celeba["steps_per_s"] == pytest.approx(1e15 / (128 * 113.2e9), 1e-3)
