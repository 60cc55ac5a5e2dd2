"""Fig. 1 / Fig. 4 analysis: statistics with known answers, tables, CLI.

The statistics are checked on samples whose answers are known: a Gaussian
(kurtosis 3, tails erfc(k / sqrt 2)) and a Laplace (kurtosis 6, tails
exp(-k sqrt 2) in units of its std). Tolerances are 5 standard errors at the
sample size used: Var(kurtosis) ~ 24 / n for a Gaussian and ~ 1188 / n for a
Laplace (delta method on m4 / m2^2 with Laplace moments mu_2k = (2k)! b^2k),
Var(tail fraction) = p (1 - p) / n. Fig. 4 reads a synthetic event file
whose td_std values per curriculum stage are known; the residuals of Fig. 1
are computed from a tiny run trained in the test (6 steps).
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ilct_jax import consistency, run_config, runs
from ilct_jax import state as state_lib
from ilct_jax.data import digits
from ilct_jax.lab import analysis, run_files

N = 1_000_000


def _se_kurtosis(var_times_n: float) -> float:
  return 5.0 * math.sqrt(var_times_n / N)


def _se_tail(p: float) -> float:
  return 5.0 * math.sqrt(p * (1.0 - p) / N) + 2.0 / N


@pytest.fixture(scope="module")
def gauss():
  return np.random.default_rng(0).standard_normal(N)


@pytest.fixture(scope="module")
def laplace():
  return np.random.default_rng(1).laplace(size=N)


def test_kurtosis_of_known_distributions(gauss, laplace):
  assert analysis.kurtosis(np.tile([-1.0, 1.0], 50)) == pytest.approx(1.0)
  assert analysis.kurtosis([0.0, 0.0, 0.0, 4.0]) == pytest.approx(
    (3 * 1**4 + 3**4) / 4 / (12 / 4) ** 2
  )
  assert abs(analysis.kurtosis(gauss) - 3.0) < _se_kurtosis(24.0)
  assert abs(analysis.kurtosis(laplace) - 6.0) < _se_kurtosis(1188.0)
  per_column = analysis.kurtosis(np.stack([gauss, laplace], 1), axis=0)
  np.testing.assert_allclose(per_column, [3.0, 6.0], atol=0.2)
  assert np.isnan(analysis.kurtosis(np.ones(5)))
  with pytest.raises(ValueError, match="empty"):
    analysis.kurtosis([])


def test_gaussian_tail_values():
  assert analysis.gaussian_tail(0.0) == pytest.approx(1.0)
  assert analysis.gaussian_tail(1.0) == pytest.approx(0.3173105, rel=1e-6)
  assert analysis.gaussian_tail(3.0) == pytest.approx(0.0026998, rel=1e-4)
  assert analysis.gaussian_tail(5.0) == pytest.approx(5.733e-7, rel=1e-3)


def test_tail_fractions_match_gaussian_and_laplace(gauss, laplace):
  ks = (1.0, 2.0, 3.0, 4.0, 5.0)
  got = analysis.tail_fractions(gauss, ks)
  for k, f in zip(ks, got):
    p = analysis.gaussian_tail(k)
    assert abs(f - p) < _se_tail(p), (k, f, p)
  got = analysis.tail_fractions(laplace, ks)
  for k, f in zip(ks, got):
    p = math.exp(-k * math.sqrt(2.0))  # P(|X| > k std), std = sqrt(2) b.
    assert abs(f - p) < _se_tail(p), (k, f, p)
  # Shift and scale do not matter; an exact count on a small array.
  x = np.r_[np.zeros(98), 10.0, -10.0] * 3.0 + 7.0
  np.testing.assert_allclose(analysis.tail_fractions(x, (3.0, 8.0)), [0.02, 0])


def test_outlier_table_rows_and_text(gauss, laplace):
  x = np.stack([gauss[:200_000], laplace[:200_000] * 5 + 2], -1)
  rows = analysis.outlier_table(x.reshape(1000, 10, 20, 2))
  assert [r["name"] for r in rows] == ["0", "1", "all"]
  assert rows[0]["kurtosis"] == pytest.approx(3.0, abs=0.06)
  assert rows[1]["kurtosis"] == pytest.approx(6.0, abs=0.4)
  text = analysis.format_outlier_table(rows)
  lines = text.splitlines()
  head = ["channel", "kurtosis", ">3", "std", ">4", "std", ">5", "std"]
  assert lines[0].split() == head
  assert lines[-1].split()[:3] == ["gaussian", "3.000", "0.0027"]
  assert len(lines) == 5


def test_fig1_digits_cli_prints_the_pixel_table(tmp_path, capsys):
  out = str(tmp_path / "fig1.png")
  analysis.main(["fig1", "--source=digits", f"--out={out}"])
  text = capsys.readouterr().out
  pixels = digits.load_digits(16)
  k = analysis.kurtosis(pixels)
  tails = analysis.tail_fractions(pixels)
  row = [ln.split() for ln in text.splitlines() if ln.split()[:1] == ["0"]]
  assert row == [["0", f"{k:.3f}", *(f"{t:.3g}" for t in tails)]]
  assert k < 3.0 and tails[0] < analysis.gaussian_tail(3.0)  # No outliers.
  assert "gaussian" in text and f"wrote {out}" in text
  assert Image.open(out).size[0] > 300


def test_load_source_npz_and_errors(tmp_path):
  path = str(tmp_path / "a.npz")
  np.savez(path, first=np.arange(12.0).reshape(3, 4), other=np.ones(2))
  np.testing.assert_array_equal(
    run_files.load_npz(path), np.arange(12.0).reshape(3, 4)
  )
  assert run_files.load_npz(path, "other").shape == (2,)
  assert run_files.load_npz(path, num=2).shape == (2, 4)
  with pytest.raises(KeyError, match="no array 'nope'"):
    run_files.load_npz(path, key="nope")
  with pytest.raises(ValueError, match="unknown"):
    run_files.load_source("pixels")
  with pytest.raises(ValueError, match="--config"):
    run_files.load_source("latents")
  with pytest.raises(ValueError, match="fig1 needs"):
    analysis.main(["fig1"])


# ------------------------------------------------------------ fig. 4


def _write_events(workdir: str, steps: list[dict[str, float]]) -> None:
  from clu import metric_writers

  writer = metric_writers.SummaryWriter(workdir)
  for i, scalars in enumerate(steps, start=1):
    writer.write_scalars(i, scalars)
  writer.close()


def test_fig4_table_from_a_synthetic_event_file(tiny_config, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  run_config.write_config(tiny_config, workdir)
  law = lambda n: math.exp(-1.15 * math.log(n - 1) - 0.85)
  logs = []
  for n in (11, 21, 41):  # tiny's stages; median of each stage = law(n).
    for f in (0.5, 1.0, 3.0):
      logs.append({"num_scales": n, "td_std": law(n) * f, "loss": 1.0})
  _write_events(workdir, logs)
  scalars = run_files.read_scalars(workdir)
  assert [s for s, _ in scalars["td_std"]] == list(range(1, 10))
  rows = analysis.fig4_rows(tiny_config, scalars)
  c0 = consistency.c0(64)  # 8 x 8 x 1 pixels.
  assert [r["N"] for r in rows] == [11, 21, 41]
  assert [r["count"] for r in rows] == [3, 3, 3]
  for r in rows:
    assert r["td_std"] == pytest.approx(law(r["N"]), rel=1e-5)
    assert r["c_constant"] == pytest.approx(c0, rel=1e-6)
  assert rows[0]["c_adaptive"] == pytest.approx(c0, rel=1e-6)  # First stage.
  assert rows[2]["c_adaptive"] == pytest.approx(law(41), rel=1e-5)
  out = str(tmp_path / "fig4.png")
  analysis.main(["fig4", workdir, f"--out={out}"])
  text = capsys.readouterr().out
  table = [ln.split() for ln in text.splitlines()]
  assert ["41", "3", f"{law(41):.4g}", f"{c0:.4g}", f"{law(41):.4g}", "1"] in (
    table
  )
  assert "fit of td_std: exp(-1.150 ln(N-1) -0.850)" in text
  assert os.path.getsize(out) > 1000


def test_fig4_without_td_std_says_so(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  run_config.write_config(tiny_config, workdir)
  _write_events(workdir, [{"num_scales": 11, "loss": 1.0}])
  rows = analysis.fig4_rows(tiny_config, run_files.read_scalars(workdir))
  assert all(r["count"] == 0 and np.isnan(r["td_std"]) for r in rows)
  assert "no td_std" in analysis.format_fig4(rows)


def test_stage_scales_and_fit():
  assert analysis.stage_scales(10, 640) == [11, 21, 41, 81, 161, 321, 641]
  assert analysis.stage_scales(10, 50) == [11, 21, 41, 51]
  assert analysis.stage_scales(10, 10) == [11]
  n = np.array([21, 41, 81])
  a, b = analysis.fit_power_law(n, np.exp(-2.0 * np.log(n - 1) + 0.5))
  assert (a, b) == (pytest.approx(-2.0), pytest.approx(0.5))


# ------------------------------------------------------------ residuals


def test_td_residuals_of_a_checkpoint(run_dir, tmp_path, capsys):
  out = str(tmp_path / "fig1.png")
  args = ["--indices=0,20,39", "--num=32", f"--out={out}"]
  analysis.main(["fig1", f"--workdir={run_dir}", *args])
  text = capsys.readouterr().out
  assert "step 6, EMA 0.9, 32 examples, grid N = 41" in text
  rows = [ln.split() for ln in text.splitlines() if ln.split()[:1] == ["20"]]
  assert len(rows) == 1 and len(rows[0]) == 10
  assert Image.open(out).size[0] > 300
  # The same numbers from consistency_fn directly, for index 20.
  run = runs.load_run(run_dir, what="ema", ema_decay=0.9)
  ct = run.config.ct
  grid = consistency.karras_grid(41, 41, ct.sigma_min, ct.sigma_max, ct.rho)
  x0 = analysis.run_data(run.config, 32, seed=0)
  levels = analysis.td_residuals(run.config, run.params, x0, 41, [20])
  z = np.random.default_rng(0).standard_normal(x0.shape).astype(np.float32)
  apply_fn = state_lib.create_model(run.config).apply
  f = lambda s: consistency.consistency_fn(
    apply_fn, run.params, x0 + s * z, jnp.full((32,), s), ct, train=False
  )
  want = jnp.mean((f(grid[20]) - f(grid[21])) ** 2, axis=(1, 2, 3))
  assert levels[0]["t"] == pytest.approx(float(grid[20]))
  np.testing.assert_allclose(levels[0]["m"], jax.device_get(want), rtol=1e-4)
  median = float(np.median(levels[0]["m"]))
  assert f"{median:.3g}" == rows[0][4]
  with pytest.raises(ValueError, match="0..39"):
    analysis.td_residuals(run.config, run.params, x0, 41, [40])
  json.dumps(analysis.default_indices(641))  # Plain ints.
  assert analysis.default_indices(641) == [0, 160, 320, 479, 639]
