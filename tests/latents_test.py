"""Latent normalization math and stats IO (ALGORITHM.md §10)."""

import numpy as np
import pytest

from ilct_jax.data import latents


def test_normalize_formula_inverse_and_std():
  rng = np.random.default_rng(0)
  mean = rng.normal(0, 2, (4, 4, 2)).astype(np.float32)
  std = rng.uniform(2, 7, (4, 4, 2)).astype(np.float32)
  unscaled = mean + std * rng.normal(size=(20000, 4, 4, 2)).astype(np.float32)
  stored = unscaled * latents.SCALING_FACTOR  # posterior.sample() * 0.18215
  x0 = latents.normalize(stored, mean, std, 0.5)
  np.testing.assert_allclose(
    x0, 0.5 * (stored / 0.18215 - mean) / std, rtol=1e-6
  )
  # Per element: std 0.5 (= sigma_data) and mean 0 after normalization.
  np.testing.assert_allclose(x0.std(axis=0), 0.5, atol=0.02)
  np.testing.assert_allclose(x0.mean(axis=0), 0.0, atol=0.02)
  # The decoder input is the UNSCALED latent (no second / 0.18215).
  np.testing.assert_allclose(
    latents.denormalize(x0, mean, std, 0.5), unscaled, rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    latents.to_stored(x0, mean, std, 0.5), stored, rtol=1e-5, atol=1e-6
  )


def test_stats_are_per_element_unbiased_and_roundtrip(tmp_path):
  rng = np.random.default_rng(1)
  z = rng.normal(size=(7, 2, 2, 4)).astype(np.float32)
  mean, std = latents.compute_stats(z)
  assert mean.shape == std.shape == (2, 2, 4)
  np.testing.assert_allclose(mean, z.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, z.std(0, ddof=1), rtol=1e-5)
  path = str(tmp_path / "stats.npz")
  latents.save_stats(path, mean, std)
  m2, s2 = latents.load_stats(path, (2, 2, 4))
  np.testing.assert_array_equal(m2, mean)
  with pytest.raises(ValueError, match=r"but the latents are \(32, 32, 4\)"):
    latents.load_stats(path, (32, 32, 4))
  with pytest.raises(FileNotFoundError, match="ilct_jax.data.encode"):
    latents.load_stats(str(tmp_path / "missing.npz"))
  np.savez(str(tmp_path / "bad.npz"), mu=mean)
  with pytest.raises(ValueError, match="lacks"):
    latents.load_stats(str(tmp_path / "bad.npz"))
