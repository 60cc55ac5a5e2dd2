"""What a run reports: window scalars, residual histograms, progress/ETA."""

import glob
import os
import time

import numpy as np
import pytest

from ilct_jax import progress as progress_lib
from ilct_jax import reporting


class _Recorder:
  def __init__(self):
    self.scalars, self.histograms = [], []

  def write_scalars(self, step, scalars):
    self.scalars.append((step, dict(scalars)))

  def write_histograms(self, step, arrays):
    self.histograms.append(
      (step, {k: np.asarray(v) for k, v in arrays.items()})
    )


class _Writers:
  def __init__(self):
    self.all = self.summary = _Recorder()


def test_window_means_rates_and_keeps_states_and_bins_residuals():
  history = [
    {
      "loss": np.float32(v),
      "num_scales": np.float32(n),
      "c": np.float32(c),
      "nonfinite": np.float32(k),
      "per_sample/td_rms": np.array([0.1, 0.2, 0.3], np.float32) * v,
      "per_sample/sigma": np.array([0.005, 0.5, 50.0], np.float32),
    }
    for v, n, c, k in ((1.0, 11, 0.03, 0), (3.0, 21, 0.01, 1))
  ]
  writers = _Writers()
  scalars = reporting.write_window(writers, 2, history)
  assert scalars == pytest.approx(
    {"loss": 2.0, "num_scales": 21, "c": 0.01, "nonfinite": 1}
  )
  step, hists = writers.summary.histograms[0]
  assert step == 2 and sorted(hists) == [
    "td_rms/sigma_0.002-0.01",
    "td_rms/sigma_0.1-1",
    "td_rms/sigma_10-80",
  ]
  np.testing.assert_allclose(hists["td_rms/sigma_10-80"], [0.3, 0.9], rtol=1e-6)


def test_eta_excludes_time_in_timed_blocks(tmp_path):
  recorder = _Recorder()
  progress = progress_lib.train_progress(100, 8, recorder)
  progress._previous_step, progress._previous_time = 0, time.monotonic()
  progress._time_per_part["samples"] = 3.0  # 3 s outside training ...
  progress._apply(10, progress._previous_time + 4.0)  # ... of 4 s in all.
  step, values = recorder.scalars[-1]
  # 10 steps in 1 s of training, not 10 steps in 4 s.
  assert step == 10 and values["steps_per_sec"] == pytest.approx(10.0)
  assert values["images_per_sec"] == pytest.approx(80.0)


def test_writers_put_hparams_in_tensorboard_and_a_readable_console_block(
  tmp_path, caplog
):
  from configs import tiny

  writers = reporting.Writers(str(tmp_path))
  with caplog.at_level("INFO"):
    writers.hparams(tiny.get_config())
  writers.all.write_scalars(1, {"loss": 1.5})
  writers.close()
  block = next(r.getMessage() for r in caplog.records if "Config:" in r.message)
  lines = block.splitlines()
  assert "  ct.loss = cauchy" in lines and "  train.num_steps = 6" in lines
  assert max(len(line) for line in lines) < 120
  assert glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))
