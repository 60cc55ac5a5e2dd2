"""Checkpoints that survive damage and topology changes; load_run.

The golden run is the worker's tiny run (conftest.run_dir: 6 steps,
checkpoints at 3 and 6); each damage test copies that workdir and breaks
step 6 the way it happens in practice (a truncated array file, garbage
metadata, flipped bytes inside an array file, a NaN in an EMA), then
restores: step 6 must be moved to damaged_checkpoints/ with one warning
line, and step 3 used.
"""

import json
import logging
import os
import shutil

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ilct_jax import (
  checkpointing,
  integrity,
  parallel,
  run_config,
  runs,
  storage,
  train,
)
from ilct_jax import state as state_lib
from ilct_jax.data import latents
from ilct_jax.evaluation import fid
from ilct_jax.models import convert_inception, vae_files


@pytest.fixture(scope="module")
def golden(run_dir):
  """The worker's tiny run (conftest.run_dir) and its final state."""
  from configs import tiny

  config = tiny.get_config()
  final = train.train_and_evaluate(config, run_dir)  # Complete: restores.
  return {"config": config, "workdir": run_dir, "final": final}


def _copy(golden, tmp_path) -> str:
  workdir = str(tmp_path / "run")
  shutil.copytree(golden["workdir"], workdir)
  return workdir


def _data_files(workdir: str, step: int) -> list[str]:
  """The array data files of a step (orbax's OCDBT `d/` files).

  All of them: OCDBT is append-only, so a file can hold superseded bytes
  that no restore reads, and which file that is depends on write timing.
  """
  root = os.path.join(workdir, "checkpoints", str(step), "state")
  return [
    os.path.join(dirpath, name)
    for dirpath, _, names in os.walk(root)
    for name in names
    if os.path.basename(dirpath) == "d"
  ]


def _restore(config, workdir):
  mngr = checkpointing.create_manager(workdir, config.train)
  try:
    mesh = parallel.make_mesh()
    target = state_lib.abstract_sharded_state(config, mesh)
    return checkpointing.restore(mngr, config, target)
  finally:
    mngr.close()


def _expect_fallback(golden, workdir, caplog):
  caplog.set_level(logging.WARNING)
  state, meta = _restore(golden["config"], workdir)
  assert int(state.step) == 3 and meta["total_steps"] == 6
  moved = os.path.join(workdir, "damaged_checkpoints", "6")
  assert os.path.isdir(moved) and os.listdir(moved)  # Kept, not deleted.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  lines = [r.getMessage() for r in caplog.records if "damaged" in r.message]
  assert len(lines) == 1 and "Checkpoint step 6 is damaged" in lines[0]
  assert "\n" not in lines[0]
  return state, lines[0]


def test_truncated_array_file_falls_back_and_resume_retrains(
  golden, tmp_path, caplog
):
  workdir = _copy(golden, tmp_path)
  for path in _data_files(workdir, 6):
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  _expect_fallback(golden, workdir, caplog)
  # The run resumes from step 3 and reaches the same final state.
  resumed = train.train_and_evaluate(golden["config"], workdir)
  chex.assert_trees_all_equal(
    jax.device_get(resumed.params), jax.device_get(golden["final"].params)
  )


def test_garbage_metadata_is_damage_not_a_config_change(
  golden, tmp_path, caplog
):
  workdir = _copy(golden, tmp_path)
  meta = os.path.join(workdir, "checkpoints", "6", "state", "_METADATA")
  with open(meta, "wb") as f:
    f.write(b"\x00garbage{")
  _, line = _expect_fallback(golden, workdir, caplog)
  assert "config" not in line


def test_flipped_bytes_inside_an_array_file_fail_the_checksum(
  golden, tmp_path, caplog
):
  workdir = _copy(golden, tmp_path)
  for k, path in enumerate(_data_files(workdir, 6)):
    with open(path, "r+b") as f:
      f.seek(os.path.getsize(path) // 2)
      f.write(np.random.default_rng(k).bytes(64))
  _, line = _expect_fallback(golden, workdir, caplog)
  assert "checksum mismatch" in line or "Error" in line


def test_non_finite_ema_is_refused_at_save_and_detected_at_restore(
  golden, tmp_path, caplog
):
  workdir = _copy(golden, tmp_path)
  config, final = golden["config"], golden["final"]
  bad_ema = jax.tree.map(
    lambda x: x.at[(0,) * x.ndim].set(np.nan), final.ema_params
  )
  bad = final.replace(ema_params=bad_ema)
  mngr = checkpointing.create_manager(workdir, config.train)
  with pytest.raises(FloatingPointError, match="not finite"):
    checkpointing.save(mngr, bad, {}, step=7, force=True)
  # Written anyway (bypassing the check, as a disk fault after a good save
  # would), with checksums that match: only the finiteness check can tell.
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  mngr.reload()
  meta = dict(total_steps=6, checksums=integrity.checksums(bad))
  mngr.save(
    6,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(bad), meta=ocp.args.JsonSave(meta)
    ),
    force=True,
  )
  mngr.wait_until_finished()
  mngr.close()
  _, line = _expect_fallback(golden, workdir, caplog)
  assert "non-finite values in ema_params" in line


def test_refused_resume_leaves_config_json_alone(golden, tmp_path):
  workdir = _copy(golden, tmp_path)
  path = os.path.join(workdir, "config.json")
  before = open(path, "rb").read()
  config = golden["config"].copy_and_resolve_references()
  config.model.model_channels = 32  # Another network: a config change.
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    train.train_and_evaluate(config, workdir)
  assert "written by another model/ema/optim config" in str(e.value)
  assert "dec_8x8_block0/affine/bias: checkpoint (32,) vs config (64,)" in (
    str(e.value)
  )
  assert open(path, "rb").read() == before
  assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


@pytest.mark.parametrize("kind", ["vae", "inception", "stats", "fid"])
def test_garbage_weight_files_name_the_file_in_one_line(tmp_path, kind):
  bad = tmp_path / "bad"
  bad.mkdir()
  garbage = b"\x89not a zip file at all"
  if kind == "vae":
    (bad / vae_files.PARAMS_FILE).write_bytes(garbage)
    (bad / vae_files.CONFIG_FILE).write_text(
      json.dumps({"format": vae_files.FORMAT})
    )
    call, name = lambda: vae_files.load_vae(str(bad)), vae_files.PARAMS_FILE
  else:
    path = str(bad / "file.npz")
    with open(path, "wb") as f:
      f.write(garbage)
    name = "file.npz"
    call = {
      "inception": lambda: convert_inception.load_inception(path),
      "stats": lambda: latents.load_stats(path),
      "fid": lambda: fid.load_stats(path),
    }[kind]
  with pytest.raises(ValueError) as e:
    call()
  message = str(e.value)
  assert name in message and "not a readable .npz file" in message
  assert "\n" not in message


def test_garbage_vae_config_names_the_file(tmp_path):
  (tmp_path / vae_files.PARAMS_FILE).write_bytes(b"x")
  (tmp_path / vae_files.CONFIG_FILE).write_text("{not json")
  with pytest.raises(ValueError, match="VAE config .*config.json is not valid"):
    vae_files.load_vae(str(tmp_path))


@pytest.mark.parametrize("first,second", [(8, 1), (1, 8)])
def test_checkpoint_moves_between_8_and_1_devices(
  golden, tmp_path, monkeypatch, crash_after, first, second
):
  """Train 3 steps on `first` devices, resume to 6 on `second` devices."""
  config = golden["config"]
  workdir = str(tmp_path / "run")
  mesh_a = parallel.make_mesh(jax.devices()[:first])
  mesh_b = parallel.make_mesh(jax.devices()[:second])
  with pytest.raises(crash_after(3)):
    train.train_and_evaluate(config, workdir, mesh=mesh_a)
  monkeypatch.undo()
  resumed = train.train_and_evaluate(config, workdir, mesh=mesh_b)
  assert int(resumed.step) == 6
  leaf = jax.tree.leaves(resumed.params)[0]
  assert leaf.sharding.mesh.size == second
  # Different device counts sum gradients in different orders: the 1- vs
  # 8-device tolerance of step_test (rtol 1e-4) over 3 more steps.
  chex.assert_trees_all_close(
    jax.device_get(resumed.params),
    jax.device_get(golden["final"].params),
    rtol=1e-4,
    atol=1e-5,
  )


def test_load_run_from_config_json_params_and_one_ema(golden, tmp_path):
  workdir = _copy(golden, tmp_path)
  final = golden["final"]
  run = runs.load_run(workdir)  # No config: config.json.
  assert run.step == 6 and run.config.model.channel_mult == (1,)
  chex.assert_trees_all_equal(
    jax.device_get(run.state.params), jax.device_get(final.params)
  )
  one = parallel.make_mesh(jax.devices()[:1])
  params = runs.load_run(workdir, what="params", mesh=one).params
  chex.assert_trees_all_equal(
    jax.device_get(params), jax.device_get(final.params)
  )
  assert jax.tree.leaves(params)[0].sharding.mesh.size == 1
  ema = runs.load_run(workdir, what="ema", ema_decay=0.99).params
  chex.assert_trees_all_equal(
    jax.device_get(ema), jax.device_get(final.ema(0.99))
  )
  with pytest.raises(ValueError, match="EMA decay 0.5 is not tracked"):
    runs.load_run(workdir, what="ema", ema_decay=0.5)
  assert storage.exists(os.path.join(workdir, "config.json"))


class _Writers:
  """Stands in for reporting.Writers: records images."""

  def __init__(self):
    self.images = []
    self.all = self

  def write_images(self, step, images):
    self.images.append((step, sorted(images)))


def _compiles(fn) -> list[str]:
  """Names of the programs XLA compiled while `fn()` ran."""
  records = []

  class Handler(logging.Handler):
    def emit(self, record):
      message = record.getMessage()
      if "Finished XLA compilation" in message or "Compiling " in message:
        records.append(message[:120])

  handler = Handler(level=logging.DEBUG)
  logger = logging.getLogger("jax")
  logger.addHandler(handler)
  old = logger.level
  logger.setLevel(logging.DEBUG)
  try:
    with jax.log_compiles(True):
      fn()
  finally:
    logger.removeHandler(handler)
    logger.setLevel(old)
  return records


def test_second_sample_grid_and_second_save_compile_nothing(golden, tmp_path):
  config, state = golden["config"], golden["final"]
  writers = _Writers()
  workdir = str(tmp_path)
  first = _compiles(
    lambda: train.write_samples(config, state, writers, workdir, 1)
  )
  second = _compiles(
    lambda: train.write_samples(config, state, writers, workdir, 2)
  )
  assert first and not second, second  # The first grid did compile.
  assert [s for s, _ in writers.images] == [1, 1, 2, 2]
  mngr = checkpointing.create_manager(workdir, config.train)
  try:
    meta = {"total_steps": 6}
    save = lambda k: checkpointing.save(mngr, state, meta, step=k, force=True)
    _compiles(lambda: save(1))
    assert not _compiles(lambda: save(2))
    mngr.wait_until_finished()
    assert mngr.all_steps() == [1, 2]
  finally:
    mngr.close()


def test_config_json_round_trip_keeps_the_run_with_overrides(tmp_path):
  from configs import tiny

  config = tiny.get_config()
  config.ema.decays = (0.9, 0.95)  # As --config.ema.decays=(0.9,0.95).
  config.sample.ema_decay = 0.95
  config.ct.loss = "huber"
  run_config.write_config(config, str(tmp_path))
  back = run_config.read_config(str(tmp_path))
  assert back.ema.decays == (0.9, 0.95) and back.ct.loss == "huber"
  assert back.model.channel_mult == (1,)  # Tuples stay tuples.
  assert train.run_meta(back, 1797) == train.run_meta(config, 1797)
  assert run_config.config_json(back) == run_config.config_json(config)
  a, b = state_lib.abstract_state(back), state_lib.abstract_state(config)
  assert jax.tree.structure(a) == jax.tree.structure(b)


def _old_run(source, tmp_path, edit):
  """A copy of the run at `source` whose config.json `edit(saved)` changed."""
  workdir = str(tmp_path / "old_run")
  shutil.copytree(source, workdir)
  path = os.path.join(workdir, run_config.CONFIG_FILE)
  saved = json.load(open(path))
  edit(saved)
  json.dump(saved, open(path, "w"))
  return workdir, saved


# Fields an old config.json lacks (coupling.group_size with the
# coupling.scope that preceded it).
ADDED_SINCE = (
  ("sample", "grid_scales"),
  ("model", "dtype"),
  ("model", "head_channels"),
  ("model", "kernels"),
  ("model", "remat"),
  ("train", "nonfinite"),
  ("train", "keep_last_epochs"),
  ("log", "wandb_project"),
  ("coupling", "group_size"),
)


def _drop_added_fields(saved):
  for group, field in ADDED_SINCE:
    del saved[group][field]
  saved["coupling"]["scope"] = "auto"


def test_a_run_from_an_earlier_version_samples_and_resumes(
  tmp_path, caplog, crash_after, monkeypatch
):
  """A config.json without fields added since opens with today's defaults
  (one log line names them); --mode=sample runs on it, and training
  resumes from its checkpoint and goes on. The run is the tiny one at the
  default head_channels (64, so 64 channels): a dropped field takes its
  default, so the run must have used it."""
  from configs import tiny
  from ilct_jax.evaluation import write_samples

  config = tiny.get_config()
  config.model.model_channels = config.model.head_channels = 64
  with pytest.raises(crash_after(3)):  # Killed after its step-3 checkpoint.
    train.train_and_evaluate(config, str(tmp_path / "run"))
  monkeypatch.undo()
  workdir, saved = _old_run(str(tmp_path / "run"), tmp_path, _drop_added_fields)
  with caplog.at_level(logging.INFO):
    config = run_config.read_config(workdir)
  (line,) = [r.getMessage() for r in caplog.records if "predates" in r.message]
  for group, field in ADDED_SINCE:
    assert f"{group}.{field}" in line
  assert config.sample.grid_scales == 640 and config.model.dtype == "float32"
  assert config.model.head_channels == 64
  assert config.model.kernels.conv == "auto"
  assert config.coupling.group_size is None  # The step reads the scope.
  assert config.coupling.scope == "auto"
  assert config.train.batch_size == saved["train"]["batch_size"]
  written = write_samples.run(config, workdir)
  assert written and all(os.path.exists(p) for p in written.values())
  # Resume from the old run's step-3 checkpoint to its last step, 6.
  train.train_and_evaluate(config, workdir)
  mngr = checkpointing.create_manager(workdir, config.train, read_only=True)
  assert mngr.latest_step() == 6
  mngr.close()


def test_unknown_config_fields_are_named_and_ignored(run_dir, tmp_path, caplog):
  def edit(saved):
    saved["model"]["wide_attention"] = True
    saved["teleport"] = {"enabled": True}

  workdir, _ = _old_run(run_dir, tmp_path, edit)
  with caplog.at_level(logging.WARNING):
    config = run_config.read_config(workdir)
  (line,) = [r.getMessage() for r in caplog.records if "not know" in r.message]
  assert "model.wide_attention" in line and "teleport" in line
  assert "wide_attention" not in config.model and "teleport" not in config
  assert run_config.config_json(config) == run_config.config_json(
    run_config.read_config(run_dir)
  )
