"""Robust losses and the diffusion loss vs closed forms (ALGORITHM.md §6-§7)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilct_jax import losses

C = 0.03456

# (value, d value / d m) as closed forms of the per-sample mean m.
CLOSED = {
  "cauchy": (
    lambda m, c: np.log(0.5 * m + c**2) - 2 * np.log(c),
    lambda m, c: 1 / (m + 2 * c**2),
  ),
  "huber": (
    lambda m, c: np.sqrt(m + c**2) - c,
    lambda m, c: 0.5 / np.sqrt(m + c**2),
  ),
  "gm": (
    lambda m, c: 2 * m / (m + 4 * c**2),
    lambda m, c: 8 * c**2 / (m + 4 * c**2) ** 2,
  ),
  "l2": (lambda m, c: m, lambda m, c: np.ones_like(m)),
}


@pytest.mark.parametrize("name", sorted(CLOSED))
def test_robust_value_and_grad(name):
  m = np.array([1e-6, 1e-3, 0.05, 2.0], np.float64)
  value, deriv = CLOSED[name]
  got = np.asarray(losses.robust(name, jnp.asarray(m, jnp.float32), C))
  np.testing.assert_allclose(got, value(m, C), rtol=2e-4, atol=1e-7)
  grad = jax.vmap(jax.grad(lambda v: losses.robust(name, v, C)))(
    jnp.asarray(m, jnp.float32)
  )
  np.testing.assert_allclose(np.asarray(grad), deriv(m, C), rtol=2e-4)


def test_consistency_loss_is_weighted_batch_mean_of_per_sample_means():
  key1, key2 = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key1, (5, 4, 4, 3)) * 0.1
  b = jax.random.normal(key2, (5, 4, 4, 3)) * 0.1
  w = jnp.arange(1.0, 6.0)
  m = np.mean((np.asarray(a) - np.asarray(b)) ** 2, axis=(1, 2, 3))
  expected = np.mean(np.asarray(w) * np.log1p(m / (2 * C**2)))
  got = losses.consistency_loss("cauchy", a, b, w, C)
  assert float(got) == pytest.approx(expected, rel=1e-5)


def test_cauchy_gradient_wrt_output_matches_chain_rule():
  key1, key2 = jax.random.split(jax.random.key(1))
  a = jax.random.normal(key1, (2, 3, 3, 1))
  b = jax.random.normal(key2, (2, 3, 3, 1))
  g = jax.grad(lambda x: losses.consistency_loss("cauchy", x, b, 1.0, C))(a)
  d = np.asarray(a - b)
  m = np.mean(d**2, axis=(1, 2, 3), keepdims=True)
  # d/dx mean_B log1p(m / 2c^2) = (1/B) * 1/(m + 2c^2) * 2 d / D.
  expected = (1 / 2) * (1 / (m + 2 * C**2)) * 2 * d / 9
  np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-4)


def test_cauchy_reduces_to_scaled_l2_for_small_residuals():
  m = jnp.array([1e-9, 1e-8])
  np.testing.assert_allclose(
    np.asarray(losses.robust("cauchy", m, C)), m / (2 * C**2), rtol=1e-3
  )


def test_diffusion_mask_threshold():
  idx = jnp.arange(20)
  for n, thr in ((11, 0.75), (21, 0.75), (641, 0.75), (11, 0.4)):
    mask = np.asarray(losses.diffusion_mask(jnp.arange(n - 1), n, thr))
    cut = int(np.floor(thr * n))  # int(0.75 * N) in the reference.
    np.testing.assert_array_equal(mask, np.arange(n - 1) >= cut)
  del idx


def test_diffusion_loss_masked_mean_and_empty_selection():
  key1, key2 = jax.random.split(jax.random.key(2))
  out = jax.random.normal(key1, (4, 2, 2, 1))
  x0 = jax.random.normal(key2, (4, 2, 2, 1))
  sigma = jnp.array([0.01, 0.1, 1.0, 10.0])
  mask = jnp.array([True, False, True, False])
  per = np.mean((np.asarray(out) - np.asarray(x0)) ** 2, axis=(1, 2, 3))
  per = per * (1 / np.asarray(sigma) ** 2 + 4.0)
  expected = (per[0] + per[2]) / 2
  got = losses.diffusion_loss(out, x0, sigma, mask, 0.5)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  empty = losses.diffusion_loss(out, x0, sigma, jnp.zeros(4, bool), 0.5)
  assert float(empty) == 0.0 and np.isfinite(float(empty))
  g = jax.grad(
    lambda o: losses.diffusion_loss(o, x0, sigma, jnp.zeros(4, bool), 0.5)
  )(out)
  assert np.all(np.isfinite(np.asarray(g)))


def test_unknown_loss_names_the_choices():
  with pytest.raises(
    ValueError,
    match="ct.loss='cauchy_new' is unknown; "
    "choose one of cauchy, huber, gm, l2",
  ):
    losses.validate("cauchy_new")
