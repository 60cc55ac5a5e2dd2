"""The sharded train state (train.fsdp; docs/DESIGN.md, sharded state).

On the 8 CPU devices: a small DiT trained with its state split over an
"fsdp" axis of 2, 4 or 8 gives the replicated layout's losses and
parameters; the compiled train step's per-device memory for the state falls
as the axis grows; checkpoints stay topology-free (a sharded run's
checkpoint restores on one device, and a replicated run resumes sharded).
"""

import os
import shutil

import chex
import jax
import numpy as np
import pytest

from ilct_jax import checkpointing, parallel, train
from ilct_jax import setup as setup_lib
from ilct_jax import step as step_lib
from ilct_jax.data import pipeline


@pytest.fixture
def config(tiny_config):
  c = tiny_config
  c.model.arch = "dit"
  c.model.norm = "rms"
  c.model.num_classes = 10
  # Width 64: the MLP and adaLN kernels (32k, 25k values) are large enough
  # to shard (parallel.FSDP_MIN_SIZE); the rest stays replicated.
  c.model.dit.update(depth=2, hidden=64, heads=2, patch=2)
  return c


def _steps(config, fsdp: int, steps: int = 3):
  config.train.fsdp = fsdp
  setup = setup_lib.build(config, parallel.make_mesh())
  state = setup.create_state()
  fn = step_lib.compile_train_step(config, setup.mesh, 6, setup.state_sharding)
  it = pipeline.create_iterator(config, setup.mesh, start_step=0)
  losses = []
  for _ in range(steps):
    state, metrics = fn(state, next(it))
    losses.append(float(metrics["loss"]))
  it.close()
  return state, losses


def test_sharded_state_trains_as_the_replicated(config):
  base, base_losses = _steps(config, 1)
  for fsdp in (4, 8):
    state, losses = _steps(config, fsdp)
    kernel = state.params["blocks_0"]["mlp"]["w12"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    moments = [
      leaf
      for leaf in jax.tree.leaves(state.opt_state)
      if leaf.shape == kernel.shape
    ]
    assert len(moments) == 4  # RAdam's mu and nu of w12 in both blocks.
    assert {m.sharding.spec for m in moments} == {kernel.sharding.spec}
    shards = {s.data.shape for s in kernel.addressable_shards}
    assert shards == {(64, 512 // fsdp)}
    np.testing.assert_allclose(losses, base_losses, rtol=1e-5)
    chex.assert_trees_all_close(
      jax.device_get(state.params),
      jax.device_get(base.params),
      rtol=1e-4,
      atol=1e-6,
    )
    print(f"fsdp={fsdp}: losses {losses} vs {base_losses}")


def test_state_memory_per_device_falls_as_the_axis_grows(config):
  config.model.dit.update(depth=4, hidden=128, heads=4)
  sizes = {}
  for fsdp in (1, 2, 4, 8):
    config.train.fsdp = fsdp
    setup = setup_lib.build(config, parallel.make_mesh())
    compiled, _ = step_lib.compile_ahead(
      config, setup.mesh, setup.abstract_state, 6
    )
    # Arguments: the state's shards plus one batch slice per device.
    sizes[fsdp] = compiled.memory_analysis().argument_size_in_bytes
  print("train-step arguments per device (bytes):", sizes)
  assert sizes[1] > sizes[2] > sizes[4] > sizes[8]
  assert sizes[8] < 0.2 * sizes[1]


def test_checkpoints_are_topology_free(config, tmp_path):
  """fsdp=4 run -> its checkpoint on one device; a replicated run resumed
  with fsdp=8 ends where the replicated run does."""
  sharded = str(tmp_path / "sharded")
  config.train.fsdp = 4
  final = train.train_and_evaluate(config, sharded)
  config.train.fsdp = 1
  single = setup_lib.build(config, parallel.make_mesh(jax.devices()[:1]))
  mngr = checkpointing.create_manager(sharded, config.train)
  restored, _ = checkpointing.restore(mngr, config, single.abstract_state)
  mngr.close()
  assert restored.params["blocks_0"]["mlp"]["w12"]["kernel"].sharding.spec == (
    jax.sharding.PartitionSpec()
  )
  chex.assert_trees_all_equal(jax.device_get(restored), jax.device_get(final))

  replicated = str(tmp_path / "replicated")
  whole = train.train_and_evaluate(config, replicated)
  shutil.rmtree(os.path.join(replicated, "checkpoints", "6"))
  config.train.fsdp = 8
  resumed = train.train_and_evaluate(config, replicated)
  chex.assert_trees_all_close(
    jax.device_get(resumed.params), jax.device_get(whole.params), rtol=1e-5
  )
