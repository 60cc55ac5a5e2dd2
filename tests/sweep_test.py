"""Checkpoint selection (evaluation/sweep.py, checkpointing.StepsFrom)."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import celeba, ffhq, lsun_church
from ilct_jax import checkpointing, run_config, runs, train
from ilct_jax.evaluation import sweep


def _fake_fid(config, params, num):
  """A FID that is a function of the params it is given: the mean of the
  first leaf, so each (step, EMA) pair gets its own value."""
  del num
  fid = float(np.mean(jax.device_get(jax.tree.leaves(params)[0]))) + 10.0
  return {s: {"fid": fid + i} for i, s in enumerate(config.eval.samplers)}


def test_sweep_ranks_every_kept_step_and_ema_and_resumes(run_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  config = run_config.read_config(workdir)
  calls = []

  def counted(config, params, num):
    calls.append(num)
    if len(calls) == 3:
      raise KeyboardInterrupt  # Stopped during the third evaluation.
    return _fake_fid(config, params, num)

  with pytest.raises(KeyboardInterrupt):
    sweep.run(config, workdir, evaluate_fn=counted, log=lambda s: None)
  path = sweep.sweep_path(workdir)
  assert len(json.load(open(path))["rows"]) == 2  # Kept as measured.
  calls.clear()
  lines = []
  rows = sweep.run(config, workdir, evaluate_fn=counted, log=lines.append)
  assert len(calls) == 2  # Only the two pairs not yet measured.
  pairs = {(r["step"], r["ema_decay"]) for r in rows}
  assert pairs == {(s, d) for s in (3, 6) for d in config.ema.decays}
  for r in rows:  # Each row's FID is that checkpoint's EMA's.
    opened = runs.load_run(
      workdir, step=r["step"], what="ema", ema_decay=r["ema_decay"]
    )
    want = _fake_fid(config, opened.params, 0)
    assert r["samplers"] == want
  table = lines[-1].splitlines()
  first = config.eval.samplers[0]
  best = min(rows, key=lambda r: r["samplers"][first]["fid"])
  assert table[2].startswith(f"| 1 | {best['step']} | {best['ema_decay']:g} |")
  assert len(table) == 2 + 4
  assert json.load(open(path))["rows"] == rows


def test_paper_configs_keep_the_last_100_epochs():
  """The window the paper picks from (epochs 1300-1400 for CelebA-HQ)."""
  c = celeba.get_config()
  start = checkpointing.window_start(c.train, 294_000, 27_000)
  assert start == 294_000 - 100 * 210 == 273_000
  policy = checkpointing.StepsFrom(start)

  class Info:
    def __init__(self, step):
      self.step = step

  steps = list(range(5000, 294_001, 5000)) + [294_000]
  kept = policy.should_preserve([Info(s) for s in steps], context=None)
  assert [s for s, k in zip(steps, kept) if k] == [
    275_000,
    280_000,
    285_000,
    290_000,
    294_000,
  ]
  for module, examples in ((lsun_church, 2 * 126_227), (ffhq, 70_000)):
    c = module.get_config()
    k = train.total_steps(c, examples)
    per_epoch = examples // c.train.batch_size
    assert checkpointing.window_start(c.train, k, examples) == (
      k - 100 * per_epoch
    )
  c.train.keep_last_epochs = 0
  assert checkpointing.window_start(c.train, 10, 10) is None


def test_a_sweep_traces_the_state_once(run_dir, tmp_path, monkeypatch):
  """Four (step, EMA) checkpoints opened against one Setup's abstract
  state: the init is traced once for the whole sweep (was once each)."""
  from ilct_jax import state as state_lib

  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  config = run_config.read_config(workdir)
  real, calls = state_lib._init, []
  monkeypatch.setattr(
    state_lib, "_init", lambda *a, **k: calls.append(1) or real(*a, **k)
  )
  rows = sweep.run(config, workdir, evaluate_fn=_fake_fid, log=lambda s: None)
  assert len(rows) == 4 and len(calls) == 1
