"""wandb beside TensorBoard (ilct_jax/wandb_writer.py), offline."""

import glob
import os

import numpy as np
import pytest

from ilct_jax import train, wandb_writer

wandb = pytest.importorskip(
  "wandb", reason="wandb is the [wandb] extra (part of [test])"
)


def test_tiny_run_logs_to_wandb_and_resumes_the_same_run(
  tiny_config, tmp_path, monkeypatch, crash_after
):
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
  monkeypatch.setenv("WANDB_SILENT", "true")
  (tmp_path / "wandb_dir").mkdir()
  logged = []
  real_init = wandb.init

  def init(*args, **kwargs):  # Record what each run is given.
    run = real_init(*args, **kwargs)
    real_log = run.log
    run.log = lambda data, step=None: (
      logged.append((step, dict(data))),
      real_log(data, step=step),
    )[1]
    return run

  monkeypatch.setattr(wandb, "init", init)
  c = tiny_config
  c.log.wandb_project = "ilct-test"
  c.train.num_steps, c.train.log_every, c.train.ckpt_every = 4, 2, 2
  c.train.sample_every = 2
  workdir = str(tmp_path / "run")
  crash = crash_after(2)  # Killed after step 2 (checkpointed).
  with pytest.raises(crash):
    train.train_and_evaluate(c, workdir)
  run_id = open(os.path.join(workdir, wandb_writer.RUN_ID_FILE)).read()
  wandb.finish()  # What the killed process's exit does to its wandb run.
  monkeypatch.undo()  # Resumed to step 4: the same wandb run.
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
  monkeypatch.setenv("WANDB_SILENT", "true")
  monkeypatch.setattr(wandb, "init", init)
  train.train_and_evaluate(c, workdir)
  dirs = glob.glob(str(tmp_path / "wandb_dir" / "wandb" / "offline-run-*"))
  assert len(dirs) == 2 and all(d.endswith(run_id.strip()) for d in dirs)
  scalar_steps = sorted(s for s, d in logged if "loss" in d)
  assert scalar_steps == [2, 4], logged
  loss = [d["loss"] for s, d in logged if "loss" in d]
  assert all(np.isfinite(loss))
  images = [d for s, d in logged if any(k.startswith("samples/") for k in d)]
  assert images and all(
    isinstance(v[0], wandb.Image) for d in images for v in d.values()
  )


def test_missing_wandb_is_one_clear_error(tiny_config, monkeypatch, tmp_path):
  import builtins

  real_import = builtins.__import__

  def no_wandb(name, *a, **k):
    if name == "wandb":
      raise ImportError("no wandb")
    return real_import(name, *a, **k)

  monkeypatch.setattr(builtins, "__import__", no_wandb)
  tiny_config.log.wandb_project = "p"
  with pytest.raises(ImportError, match=r"pip install 'ilct_jax\[wandb\]'"):
    wandb_writer.WandbWriter(tiny_config, str(tmp_path))
