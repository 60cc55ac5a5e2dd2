"""The real loop: checkpoints, crash + resume bit-identical, bad input."""

import json
import os
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from ilct_jax import (
  checkpointing,
  config_checks,
  integrity,
  parallel,
  runs,
  train,
)
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.data import digits, pipeline
from ilct_jax.evaluation import write_samples


def test_crash_then_resume_is_bit_identical(
  tiny_config, tmp_path, monkeypatch, crash_after, run_dir
):
  # The uninterrupted run: the worker's tiny run (restored when complete).
  straight = train.train_and_evaluate(tiny_config, run_dir)
  assert int(straight.step) == 6

  workdir = str(tmp_path / "b")
  with pytest.raises(crash_after(3)):
    train.train_and_evaluate(tiny_config, workdir)
  mngr = checkpointing.create_manager(workdir, tiny_config.train)
  assert mngr.all_steps() == [3]  # ckpt_every=3: the step-3 save finished.
  mngr.close()
  monkeypatch.undo()

  resumed = train.train_and_evaluate(tiny_config, workdir)
  assert int(resumed.step) == 6
  chex.assert_trees_all_equal(
    jax.device_get(resumed.params), jax.device_get(straight.params)
  )
  chex.assert_trees_all_equal(
    jax.device_get(resumed.ema_params), jax.device_get(straight.ema_params)
  )
  chex.assert_trees_all_equal(
    jax.device_get(resumed.opt_state), jax.device_get(straight.opt_state)
  )
  mngr = checkpointing.create_manager(workdir, tiny_config.train)
  assert mngr.all_steps() == [3, 6]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["ct"]["loss"] == "cauchy"

  # A finished run started again does nothing and keeps its checkpoints.
  again = train.train_and_evaluate(tiny_config, workdir)
  assert int(again.step) == 6 and mngr.all_steps() == [3, 6]
  mngr.close()

  # --mode=sample from the same workdir writes grids and arrays.
  written = write_samples.run(tiny_config, workdir)
  for name in ("onestep", "twostep"):
    assert os.path.exists(written[name])
    with np.load(written[name].replace(".png", ".npz")) as f:
      assert f["images"].shape == (4, 8, 8, 1) and f["images"].dtype == np.uint8


def test_resume_refuses_a_different_run(tiny_config, tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config, workdir)  # Same program as above.
  tiny_config.train.num_steps = 9  # Changes the curriculum: not a resume.
  with pytest.raises(
    checkpointing.CheckpointMismatchError, match="total_steps"
  ):
    train.train_and_evaluate(tiny_config, workdir)
  tiny_config.train.num_steps = 6
  tiny_config.model.model_channels = 32  # Another network.
  with pytest.raises(
    checkpointing.CheckpointMismatchError, match="new --workdir"
  ):
    train.train_and_evaluate(tiny_config, workdir)


def test_save_restore_next_step_bit_identical(tiny_config, tmp_path):

  mesh = parallel.make_mesh()
  fn = step_lib.compile_train_step(tiny_config, mesh, total_steps=6)
  src = pipeline.ArraySource(
    digits.load_digits(8), tiny_config.train.batch_size, 0
  )
  batch = lambda k: jax.device_put(
    src.local_batch(k, 0, 1), parallel.batch_sharding(mesh)
  )
  state = state_lib.create_train_state(tiny_config, mesh)
  state, _ = fn(state, batch(0))
  mngr = checkpointing.create_manager(str(tmp_path), tiny_config.train)
  assert checkpointing.save(mngr, state, {"total_steps": 6}, step=1, force=True)
  mngr.wait_until_finished()
  restored, meta = checkpointing.restore(
    mngr, tiny_config, state_lib.create_train_state(tiny_config, mesh)
  )
  assert meta["total_steps"] == 6 and int(restored.step) == 1
  assert meta["checksums"] == integrity.checksums(state)
  a, ma = fn(state, batch(1))
  b, mb = fn(restored, batch(1))
  assert float(ma["loss"]) == float(mb["loss"])
  chex.assert_trees_all_equal(
    jax.device_get(a.params), jax.device_get(b.params)
  )
  mngr.close()


def test_never_checkpoints_nan_params(tiny_config, tmp_path):

  mesh = parallel.make_mesh()
  state = state_lib.create_train_state(tiny_config, mesh)
  bad = state.replace(
    params=jax.tree.map(lambda x: x * np.nan, state.params), step=state.step + 1
  )
  mngr = checkpointing.create_manager(str(tmp_path), tiny_config.train)
  with pytest.raises(FloatingPointError, match="not finite"):
    checkpointing.save(mngr, bad, {}, step=1, force=True)
  assert mngr.all_steps() == []
  mngr.close()


def test_batch_must_divide_over_devices(tiny_config, tmp_path):
  tiny_config.train.batch_size = 12
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert str(e.value) == (
    "train.batch_size=12 does not divide over 8 devices; use a multiple of 8"
    " (e.g. 8)"
  )
  with pytest.raises(ValueError, match="divide over 2 processes"):
    tiny_config.train.batch_size = 8
    config_checks.check_batch(tiny_config, num_devices=1, num_processes=2)
    tiny_config.train.batch_size = 9
    config_checks.check_batch(tiny_config, num_devices=1, num_processes=2)


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("ct.loss", "cauchy_new", "ct.loss='cauchy_new' is unknown; choose one of"),
    ("model.norm", "batch", "model.norm='batch' is unknown; choose one of"),
    ("coupling.method", "emd", "coupling.method='emd' is unknown"),
    ("optim.name", "sgd", "optim.name='sgd' is unknown; choose one of"),
    ("ct.weighting", "snr", "ct.weighting='snr' is unknown; choose one of"),
    ("data.source", "imagenet", "data.source='imagenet' is unknown"),
  ],
)
def test_unknown_names_fail_fast(tiny_config, tmp_path, field, value, message):
  group, leaf = field.split(".")
  tiny_config[group][leaf] = value
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_unwritable_workdir(tiny_config, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(
    PermissionError, match="is not writable .* pass a writable"
  ):
    train.train_and_evaluate(tiny_config, str(blocker / "run"))


def test_cli_config_typo_is_one_line(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "ilct_jax.main",
      "--config=configs/tiny.py",
      f"--workdir={tmp_path}",
      "--config.optim.lrr=1",
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=os.path.dirname(os.path.dirname(__file__)),
  )
  assert proc.returncode != 0
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: bad --config override")
  assert 'Did you mean "lr"' in last and "configs/default.py" in last


def test_fid_during_training_checks_its_files_before_training(
  tiny_config, tmp_path
):
  tiny_config.train.eval_every = 2
  with pytest.raises(FileNotFoundError, match="convert_inception"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_a_fresh_run_compiles_its_step_before_creating_the_state(
  tiny_config, tmp_path, monkeypatch
):
  # The compiler's transient memory must not add to the state's
  # (train.py docstring): compile against the abstract state, then init.
  events = []
  compile_step, create = train.compile_step, state_lib.create_train_state

  def recording_compile(config, mesh, state, steps):
    abstract = all(
      isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(state)
    )
    events.append("compile abstract" if abstract else "compile real")
    return compile_step(config, mesh, state, steps)

  def recording_create(config, mesh, sharding=None):
    events.append("create")
    return create(config, mesh, sharding)

  monkeypatch.setattr(train, "compile_step", recording_compile)
  monkeypatch.setattr(state_lib, "create_train_state", recording_create)
  final = train.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  assert int(final.step) == 6
  assert events == ["compile abstract", "create"]


def test_the_state_is_traced_once_per_start(
  tiny_config, tmp_path, monkeypatch, crash_after
):
  """One Setup per start: a fresh run traces the init twice (the abstract
  state, once, and the jitted creation), a resume once (the abstract
  restore target); opening a run for sampling once."""
  real, calls = state_lib._init, []

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  workdir = str(tmp_path / "run")
  with pytest.raises(crash_after(3)):  # Killed after the step-3 checkpoint.
    monkeypatch.setattr(state_lib, "_init", counting)
    train.train_and_evaluate(tiny_config, workdir)
  assert len(calls) == 2  # Abstract state + the jitted init.
  monkeypatch.undo()
  monkeypatch.setattr(state_lib, "_init", counting)
  calls.clear()
  train.train_and_evaluate(tiny_config, workdir)  # Resumes at step 3.
  assert len(calls) == 1
  calls.clear()
  runs.load_run(workdir, what="ema")
  assert len(calls) == 1
