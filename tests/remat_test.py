"""model.remat: the same checkpoints and values, fewer saved activations.

Pins, on the tiny config (configs/tiny.py), that rematerializing the UNet
blocks (`unet.RematUNetBlock`)

* leaves the train state's tree, shapes and dtypes (what a checkpoint
  restore compares) and the initial parameters unchanged, so checkpoints
  written with and without remat are interchangeable; a run's config.json
  from before the field existed still builds (without remat);
* leaves one real train step (`step.compile_train_step`, dropout on so the
  lifted dropout RNG is exercised) unchanged: loss, gradient norm and
  updated parameters;
* shrinks what autodiff saves between the forward and the backward pass:
  the batch-sized residuals of the gradient computation.

Why residuals rather than XLA's compiled memory analysis: XLA:CPU (the
test backend) drops the optimization barrier that orders the recomputation
after the incoming cotangent (its `cse_barrier_expander` pass runs right
after CSE, before scheduling) and then schedules each block's recomputation
next to its forward, so `memory_analysis().temp_size_in_bytes` of the
gradient of mean(F(x)^2) does not move (measured at batch 32, jax 0.10.2:
13,481,216 bytes without remat, 13,481,600 with). The residuals are what
remat changes on every backend; whether the peak follows depends on the
backend's scheduler (GPU and TPU were not measured here).
"""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilct_jax import integrity, parallel, run_config
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib

# No parameter of the tiny UNet has a leading axis of 24 (its sizes are 1,
# 3, 8, 16, 32, 48 and 64), so "leading axis == batch" picks activations.
RESIDUAL_BATCH = 24


def _with_remat(config, remat: bool, **model):
  c = config.copy_and_resolve_references()
  c.model.remat = remat
  for name, value in model.items():
    c.model[name] = value
  return c


def _state_layout(config) -> dict[str, tuple]:
  """{path: (shape, dtype)} of the abstract train state (the restore check)."""
  tree = state_lib.abstract_state(config)
  return {p: (x.shape, x.dtype) for p, x in integrity.leaf_paths(tree)}


def test_remat_keeps_the_state_tree(tiny_config):
  off = _state_layout(_with_remat(tiny_config, False))
  on = _state_layout(_with_remat(tiny_config, True))
  assert on == off
  assert "params/dec_8x8_in0/qkv/kernel" in on  # Block names are unchanged.


def test_config_json_without_remat_builds_plain_model(tiny_config):
  """A run from before model.remat opens (run_config.upgrade_config) with
  the field at its default: the plain, non-recomputing model."""
  data = json.loads(run_config.config_json(tiny_config))
  del data["model"]["remat"]
  config = run_config.upgrade_config(data)
  assert state_lib.create_model(config).remat is False


def _one_step(config):
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = state_lib.create_train_state(config, mesh)
  init = jax.device_get(state.params)
  fn = step_lib.compile_train_step(config, mesh, total_steps=6)
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  batch = np.random.default_rng(0).normal(0, 0.5, shape).astype(np.float32)
  state, metrics = fn(
    state, jax.device_put(batch, parallel.batch_sharding(mesh))
  )
  return init, jax.device_get(state.params), jax.device_get(metrics)


def test_remat_train_step_matches(tiny_config):
  # Remat reruns the same float32 ops on the same inputs, so the step agrees
  # up to how XLA fuses the recomputation: a few float32 ulps (eps = 1.2e-7)
  # at most. Measured on XLA:CPU: bit-identical loss, gradient norm and
  # parameters.
  init0, params0, m0 = _one_step(_with_remat(tiny_config, False, dropout=0.1))
  init1, params1, m1 = _one_step(_with_remat(tiny_config, True, dropout=0.1))
  chex.assert_trees_all_equal(init1, init0)
  for key in ("loss", "ct_loss", "grad_norm"):
    assert float(m1[key]) == pytest.approx(float(m0[key]), rel=1e-6), key
  chex.assert_trees_all_close(params1, params0, rtol=1e-6, atol=1e-7)


def _activation_residual_bytes(config, batch: int) -> int:
  """Bytes of the batch-sized values the gradient saves for its backward.

  An upper bound: a value saved by several blocks (the noise embedding) is
  counted once per block. Tracing only (`jax.eval_shape`), no compile.
  """
  model = state_lib.create_model(config)
  params = state_lib.abstract_state(config).params
  shape = (batch, *state_lib.example_shape(config))
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  labels = jax.ShapeDtypeStruct((batch,), jnp.float32)

  def pullback(params, x, labels):
    def loss(p):
      out = model.apply({"params": p}, x, labels, train=True)
      return jnp.mean(out**2)

    return jax.vjp(loss, params)[1]

  saved = jax.tree.leaves(jax.eval_shape(pullback, params, x, labels))
  return sum(
    int(np.prod(r.shape)) * r.dtype.itemsize
    for r in saved
    if r.shape and r.shape[0] == batch
  )


def test_remat_saves_fewer_activations(tiny_config):
  b = RESIDUAL_BATCH
  off = _activation_residual_bytes(_with_remat(tiny_config, False), b)
  on = _activation_residual_bytes(_with_remat(tiny_config, True), b)
  # Measured at batch 24: 9,182,208 bytes without remat, 1,245,696 with
  # (0.14x): only each block's inputs are kept, not its activations.
  assert on <= 0.25 * off, (on, off)
