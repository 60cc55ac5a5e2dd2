"""Formula values of schedules and parametrization (ALGORITHM.md §1-§4, §6)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from configs import default
from ilct_jax import consistency


@pytest.fixture
def ct():
  return default.get_config().ct


def test_karras_grid_n11_matches_algorithm(ct):
  grid = consistency.karras_grid(11, 11, ct.sigma_min, ct.sigma_max, ct.rho)
  # ALGORITHM.md §2, example for N = 11.
  expected = [
    80,
    45.31,
    24.41,
    12.38,
    5.839,
    2.515,
    0.9654,
    0.3183,
    0.0851,
    0.0167,
    0.002,
  ]
  np.testing.assert_allclose(np.asarray(grid), expected, rtol=1e-3, atol=1e-4)


def test_padded_grid_equals_exact_grid_and_is_decreasing(ct):
  exact = consistency.karras_grid(21, 21, ct.sigma_min, ct.sigma_max, ct.rho)
  padded = consistency.karras_grid(21, 641, ct.sigma_min, ct.sigma_max, ct.rho)
  np.testing.assert_allclose(padded[:21], exact, rtol=1e-6)
  np.testing.assert_allclose(padded[21:], ct.sigma_min, rtol=1e-6)
  assert np.all(np.diff(np.asarray(exact)) < 0)


def test_sigma_420_of_641_grid(ct):
  grid = consistency.karras_grid(641, 641, ct.sigma_min, ct.sigma_max, ct.rho)
  # ALGORITHM.md §14: the 2-step intermediate level.
  assert float(grid[420]) == pytest.approx(0.5286, abs=1e-4)
  assert float(grid[440]) == pytest.approx(0.369, abs=1e-3)


def test_curriculum_seven_equal_stages():
  total = 294_000  # CelebA: 210 steps/epoch * 1400 epochs.
  steps = np.arange(0, total + 1000, 500)
  ns = np.asarray(
    jax.vmap(lambda k: consistency.num_scales(k, total, 10, 640))(steps)
  )
  assert sorted(set(ns.tolist())) == [11, 21, 41, 81, 161, 321, 641]
  assert np.all(np.diff(ns) >= 0)
  # K' = floor(294000 / 7) = 42000 steps per stage (ALGORITHM.md §2).
  for stage, n in enumerate([11, 21, 41, 81, 161, 321, 641]):
    assert int(consistency.num_scales(stage * 42_000, total, 10, 640)) == n
    if stage:
      assert (
        int(consistency.num_scales(stage * 42_000 - 1, total, 10, 640))
        == [11, 21, 41, 81, 161, 321][stage - 1]
      )
  assert int(consistency.num_scales(total + 10**6, total, 10, 640)) == 641


def test_ict_1280_curriculum_has_eight_stages():
  ns = {
    int(consistency.num_scales(k, 8000, 10, 1280)) for k in range(0, 9000, 50)
  }
  assert sorted(ns) == [11, 21, 41, 81, 161, 321, 641, 1281]


def test_index_probs_are_lognormal_interval_masses(ct):
  for n in (11, 81, 641):
    grid = consistency.karras_grid(n, 641, ct.sigma_min, ct.sigma_max, ct.rho)
    p = np.asarray(consistency.index_probs(grid, jnp.int32(n), -1.1, 2.0))
    s = np.asarray(grid[:n], np.float64)
    cdf = special.erf((np.log(s) - (-1.1)) / (np.sqrt(2) * 2.0))
    mass = cdf[:-1] - cdf[1:]
    np.testing.assert_allclose(p[: n - 1], mass / mass.sum(), rtol=2e-4)
    assert p[n - 1 :].sum() == 0.0
    assert p.sum() == pytest.approx(1.0, abs=1e-5)


def test_sampled_indices_follow_probs(ct):
  n = 11
  # Padded to 41 entries (as a run with end_scales 40 pads): the padding
  # must never be drawn. (Drawing over 641 entries cost 15x the time.)
  grid = consistency.karras_grid(n, 41, ct.sigma_min, ct.sigma_max, ct.rho)
  idx = consistency.sample_indices(
    jax.random.key(0), 200_000, grid, jnp.int32(n), ct
  )
  counts = np.bincount(np.asarray(idx), minlength=41) / 200_000
  p = np.asarray(consistency.index_probs(grid, jnp.int32(n), -1.1, 2.0))
  assert counts[n - 1 :].sum() == 0
  np.testing.assert_allclose(counts[: n - 1], p[: n - 1], atol=4e-3)


def test_boundary_condition_and_scalings(ct):
  c_skip, c_out, c_in = consistency.scalings(jnp.float32(ct.sigma_min), ct)
  assert float(c_skip) == 1.0 and float(c_out) == 0.0
  s = 3.0
  c_skip, c_out, c_in = consistency.scalings(jnp.float32(s), ct)
  sd, smin = 0.5, 0.002
  assert float(c_skip) == pytest.approx(sd**2 / ((s - smin) ** 2 + sd**2))
  assert float(c_out) == pytest.approx((s - smin) * sd / np.sqrt(s**2 + sd**2))
  assert float(c_in) == pytest.approx(1 / np.sqrt(s**2 + sd**2))


def test_consistency_fn_is_identity_at_sigma_min(ct):
  x = jax.random.normal(jax.random.key(1), (3, 4, 4, 2))
  apply = lambda v, x, labels, **kw: 7.0 + x * 3.0 + labels[:, None, None, None]
  out = consistency.consistency_fn(apply, {}, x, jnp.full((3,), 0.002), ct)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_noise_labels():
  np.testing.assert_allclose(
    consistency.noise_labels(jnp.array([1.0, 80.0, 0.002])),
    250 * np.log([1.0, 80.0, 0.002]),
    rtol=1e-6,
  )


def test_loss_weights(ct):
  t, r = jnp.array([80.0, 0.0851]), jnp.array([45.31, 0.0167])
  np.testing.assert_allclose(
    consistency.loss_weight("ict", t, r, 0.5), 1 / (t - r), rtol=1e-6
  )
  np.testing.assert_allclose(
    consistency.loss_weight("karras", t, r, 0.5), 1 / t**2 + 4, rtol=1e-6
  )
  assert np.all(np.asarray(consistency.loss_weight("uniform", t, r, 0.5)) == 1)
  # N = 641: lambda ranges over ~1.5 .. 1.3e4 and is positive (ALGORITHM.md §4).
  g = consistency.karras_grid(641, 641, 0.002, 80.0, 7.0)
  w = np.asarray(consistency.loss_weight("ict", g[:-1], g[1:], 0.5))
  assert np.all(w > 0)
  assert w.min() == pytest.approx(1.5, rel=0.05)
  assert w.max() == pytest.approx(1.3e4, rel=0.05)
  with pytest.raises(ValueError, match="ct.weighting='snr' is unknown"):
    consistency.loss_weight("snr", t, r, 0.5)


def test_c0_and_adaptive_c_values(ct):
  assert consistency.c0(4 * 32 * 32) == pytest.approx(0.03456, rel=1e-6)
  published = {
    11: 0.03456,
    21: 1.364e-2,
    41: 6.144e-3,
    81: 2.769e-3,
    161: 1.248e-3,
    321: 5.622e-4,
    641: 2.534e-4,
  }
  for n, c in published.items():
    got = float(consistency.robust_c(jnp.int32(n), ct, dim=4096))
    assert got == pytest.approx(c, rel=1e-3), n


def test_constant_c_and_multiples(ct):
  ct.c_schedule = "constant"
  for mult in (0.01, 0.3, 3.0):
    ct.c_mult = mult
    got = float(consistency.robust_c(jnp.int32(641), ct, dim=4096))
    assert got == pytest.approx(0.03456 * mult, rel=1e-5)
  ct.c, ct.c_mult = 0.05, 1.0
  assert float(
    consistency.robust_c(jnp.int32(81), ct, dim=4096)
  ) == pytest.approx(0.05)


def test_validate_names_the_fix(ct):
  ct.index_sampler = "cosine"
  with pytest.raises(ValueError, match="choose one of lognormal, uniform"):
    consistency.validate(ct)
