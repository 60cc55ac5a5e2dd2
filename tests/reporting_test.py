"""What a run reports: window scalars, residual histograms, progress/ETA."""

import glob
import os

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


def test_eta_excludes_time_in_timed_blocks(monkeypatch, caplog):
  clock = iter([0.0, 1.0, 2.0, 5.0, 6.0, 7.0])
  monkeypatch.setattr(progress_lib.time, "perf_counter", lambda: next(clock))
  recorder = _Recorder()
  progress = progress_lib.train_progress(100, 8, recorder)  # t=0
  progress(0)  # t=1: the reference point (a first step's compile is out).
  with progress.timed("samples"):  # t=2 .. t=5: 3 s outside training ...
    pass
  with caplog.at_level("INFO"):
    progress(10)  # t=6: not due (every 60 s) ...
    progress(100)  # t=7: ... the last step always is: 100 steps in 3 s.
  step, values = recorder.scalars[-1]
  # 100 steps in 6 s of which 3 s of training: 33.3 steps/s, not 16.7.
  assert step == 100 and values["steps_per_sec"] == pytest.approx(100 / 3)
  assert values["images_per_sec"] == pytest.approx(800 / 3)
  assert values["uptime"] == pytest.approx(7.0)
  assert recorder.scalars == [(100, values)]
  assert [r.getMessage() for r in caplog.records] == [
    "train: 100/100 steps (100.0%), 33.3 steps/s, ETA 0m00s "
    "(outside training: samples 3s)"
  ]


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
