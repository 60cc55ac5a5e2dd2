"""`python -m ilct_jax.lab.inspect_run`: the summary of a real (tiny) run.

A module fixture trains the tiny config for 6 steps (checkpoints at 3 and 6,
one log line per step) and summarizes it once; every number is checked
against an independent source: the parameter count of the restored params,
the curriculum formulas, and the event file read with TensorFlow's own
summary iterator. The command line runs once in a subprocess.
"""

import glob
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from ilct_jax import consistency, parallel, runs, storage
from ilct_jax.evaluation import write_samples
from ilct_jax.lab import inspect_run as run_inspect
from ilct_jax.models import unet
from tests import cluster, gcs_test

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def summary(run_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("inspect") / "grids.png")
  return run_inspect.summarize(run_dir, out=out, num=16)


def _logged(workdir: str, tag: str) -> dict[int, float]:
  """{step: value} of a scalar, read with TensorFlow's summary iterator."""
  import tensorflow as tf

  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "*tfevents*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:
          out[event.step] = float(tf.make_ndarray(v.tensor))
  return out


def test_checkpoints_config_diff_and_parameters(summary, run_dir, tiny_config):
  assert summary["steps"] == [3, 6] and summary["damaged"] == []
  assert summary["step"] == 6 and summary["total_steps"] == 6
  diff = {k: (a, b) for k, a, b in summary["config_diff"]}
  assert diff["data.source"] == ("digits", "latents")
  assert diff["model.model_channels"] == (16, 128)
  assert diff["ema.decays"] == ((0.9, 0.99), (0.999, 0.9999, 0.99993, 0.99995))
  assert "ct.sigma_max" not in diff  # Equal fields are not listed.
  text = run_inspect.format_summary(summary)
  assert "  data.source: digits (latents)" in text.splitlines()
  assert "  model.model_channels: 16 (128)" in text.splitlines()
  restored = runs.load_run(
    run_dir, what="params", mesh=parallel.make_mesh(jax.devices()[:1])
  )
  total = unet.count_params(restored.params)
  assert sum(summary["params"].values()) == total
  assert set(summary["params"]) == set(restored.params)
  assert f"parameters: {total:,} in {len(restored.params)} modules" in text


def test_emas_nonfinite_curriculum_and_metrics(summary, run_dir, tiny_config):
  assert summary["ema_decays"] == (0.9, 0.99)
  assert summary["nonfinite"] == 0
  ct = tiny_config.ct
  n = int(consistency.num_scales(5, 6, ct.start_scales, ct.end_scales))
  c = float(consistency.robust_c(n, ct, 8 * 8 * 1))
  assert (summary["num_scales"], summary["c"]) == (n, pytest.approx(c))
  assert n == 41 and summary["stages"] == [11, 21, 41]
  # The logs of step 6 come from that same update.
  assert _logged(run_dir, "num_scales")[6] == n
  assert _logged(run_dir, "c")[6] == pytest.approx(c)
  loss = _logged(run_dir, "loss")
  assert summary["metrics_step"] == 6 == max(loss)
  assert summary["metrics"]["loss"] == loss[6]
  text = run_inspect.format_summary(summary).splitlines()
  assert "curriculum: N = 41 (stage 3 of 3: 11, 21, 41)" in text
  assert f"c: {c:.6g} (adaptive)" in text
  assert f"  loss: {loss[6]:.6g}" in text


def test_grids_png(summary):
  assert list(summary["batches"]) == ["onestep", "twostep"]
  for images in summary["batches"].values():
    assert images.shape == (16, 8, 8, 1) and images.dtype == np.uint8
  # Two 4x4 grids of 8x8 tiles with 1-pixel gutters (37 px), a 2-pixel gap,
  # upscaled 16x (write_samples.write_grid's 128 // 8).
  with Image.open(summary["png"]) as img:
    assert img.size == ((37 + 2 + 37) * 16, 37 * 16)


def test_grids_show_the_samples_of_the_training_grids(summary, run_dir):
  # write_samples.sample_images (training grids, --mode=sample) on all 8 devices
  # draws the same samples as the one-device grids of the summary.
  run = runs.load_run(run_dir, what="ema", ema_decay=0.9)
  want = write_samples.sample_images(run.config, run.params, 16)
  for name, (_, images) in want.items():
    np.testing.assert_array_equal(summary["batches"][name], images)


def test_cli(run_dir, tmp_path):
  out = str(tmp_path / "cli.png")
  env = cluster.env(devices=1)
  cmd = [sys.executable, "-m", "ilct_jax.lab.inspect_run", run_dir, "--num=4"]
  proc = subprocess.run(
    [*cmd, f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0] == f"run: {run_dir}"
  assert "checkpoints: 3, 6 (restored step 6 of 6 total steps)" in lines
  assert "damaged_checkpoints: none" in lines
  assert "  data.source: digits (latents)" in lines
  assert "ema_decays: 0.9, 0.99" in lines
  assert "nonfinite: 0 skipped steps" in lines
  assert "curriculum: N = 41 (stage 3 of 3: 11, 21, 41)" in lines
  assert "metrics at step 6:" in lines
  assert lines[-1].startswith(f"grids: {out} (onestep, twostep")
  with Image.open(out) as img:  # 2x2 grids of 8x8 tiles: 19 px.
    assert img.size == ((19 + 2 + 19) * 16, 19 * 16)
  assert "Given directory is read only" not in proc.stderr


def test_checkpoints_on_disk_lists_damaged_and_skips_temporaries(tmp_path):
  for d in ("checkpoints/3", "checkpoints/6", "damaged_checkpoints/9"):
    os.makedirs(tmp_path / d)
  os.makedirs(tmp_path / "checkpoints" / "12.orbax-checkpoint-tmp-1")
  assert run_inspect.checkpoints_on_disk(str(tmp_path)) == ([3, 6], ["9"])
  assert run_inspect.checkpoints_on_disk(str(tmp_path / "none")) == ([], [])


def test_config_diff_names_absent_fields():
  a = ml_collections.ConfigDict({"x": {"y": 1, "z": (1, 2)}, "new": "s"})
  b = ml_collections.ConfigDict({"x": {"y": 1, "z": (1, 3)}, "old": ""})
  assert run_inspect.config_diff(a, b) == [
    ("new", "s", run_inspect.ABSENT),
    ("old", run_inspect.ABSENT, ""),
    ("x.z", (1, 2), (1, 3)),
  ]


def test_missing_base_and_missing_run(summary, tmp_path):
  text = run_inspect.format_summary(
    dict(summary, config_diff=None, base="/nowhere/default.py")
  )
  assert "config: base /nowhere/default.py not found (pass --base=FILE)" in text
  assert "grids: not drawn" in run_inspect.format_summary(
    dict(summary, batches=None, png=None)
  )
  with pytest.raises(FileNotFoundError, match="config.json"):
    run_inspect.summarize(str(tmp_path))


def test_a_damaged_newest_checkpoint_is_reported(run_dir, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  state_dir = os.path.join(workdir, "checkpoints", "6", "state")
  files = [
    os.path.join(root, f) for root, _, fs in os.walk(state_dir) for f in fs
  ]
  with open(max(files, key=os.path.getsize), "r+b") as f:
    f.truncate(16)
  s = run_inspect.summarize(workdir, num=0)
  assert (s["steps"], s["step"], s["damaged"]) == ([3, 6], 3, [])
  first = run_inspect.format_summary(s).splitlines()[1]
  assert first == (
    "checkpoints: 3, 6 (restored step 3 of 6 total steps); newer steps "
    "failed verification (see the log)"
  )
  assert any("step 6 is damaged" in r.getMessage() for r in caplog.records)


# Last in the module: the emulator's environment lasts until the module ends.
gcs = gcs_test.gcs  # The GCS emulator fixture (fake-gcs-server).


def test_summary_of_a_gs_workdir(gcs, run_dir):
  import gcsfs

  gcsfs.GCSFileSystem(token="anon").put(
    run_dir, f"{gcs_test.BUCKET}/inspect/run", recursive=True
  )
  workdir = f"gs://{gcs_test.BUCKET}/inspect/run"
  s = run_inspect.summarize(workdir, num=4)
  assert (s["steps"], s["step"], s["nonfinite"]) == ([3, 6], 6, 0)
  assert s["metrics"]["loss"] == _logged(run_dir, "loss")[6]
  assert s["png"] == f"{workdir}/inspect_6.png"
  png = storage.read_bytes(s["png"])
  assert png.startswith(b"\x89PNG")
