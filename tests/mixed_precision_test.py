"""model.dtype=bfloat16: bf16 compute, float32 params, statistics and loss.

The tiny config trains 200 steps (lr 2e-3, so the network, not the c_skip x
term, drives the loss) in float32 and in bfloat16 from the same init on the
same batches. Trajectories of two precisions part ways as rounding compounds,
so the comparison is statistical: the mean loss over each 50-step window
agrees within 5% (measured on the 2-core CPU: 0.00, 0.01, 0.02 and 0.13%;
the largest single-step difference is 0.43), the bf16 run is not the f32
run (its losses differ), and no step of either is non-finite.
"""

import jax
import jax.numpy as jnp
import numpy as np

from ilct_jax import parallel
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.data import pipeline

STEPS, WINDOW = 200, 50


def _losses(config, dtype):
  c = config.copy_and_resolve_references()
  c.model.dtype = dtype
  c.train.num_steps = STEPS
  c.optim.lr = 2e-3  # Fast enough that the network (not c_skip x) matters.
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = state_lib.create_train_state(c, mesh)
  fn = step_lib.compile_train_step(c, mesh, total_steps=STEPS)
  it = pipeline.create_iterator(c, mesh, start_step=0)
  losses = []
  try:
    for _ in range(STEPS):
      state, metrics = fn(state, next(it))
      losses.append(metrics["loss"])
  finally:
    it.close()
  return state, np.asarray(jax.device_get(losses)), metrics


def test_bf16_trains_like_f32(tiny_config):
  s32, l32, m32 = _losses(tiny_config, "float32")
  s16, l16, m16 = _losses(tiny_config, "bfloat16")
  assert np.all(np.isfinite(l32)) and np.all(np.isfinite(l16))
  assert int(m32["nonfinite"]) == int(m16["nonfinite"]) == 0
  w32 = l32.reshape(-1, WINDOW).mean(axis=1)
  w16 = l16.reshape(-1, WINDOW).mean(axis=1)
  np.testing.assert_allclose(w16, w32, rtol=0.05)
  assert np.abs(l16 - l32).max() > 1e-3  # bf16 compute really happened.
  # Parameters, EMAs and optimizer state stay float32 under bf16 compute.
  for tree in (s16.params, s16.ema_params, s16.opt_state):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if hasattr(x, "dtype")}
    assert dtypes <= {jnp.dtype("float32"), jnp.dtype("int32")}, dtypes
