"""1-step and multistep sampling (ALGORITHM.md §14) with a counting network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ilct_jax import consistency, sampling
from ilct_jax.evaluation import image_files


class Counting:
  """A toy F_theta that records the noise levels it is called at."""

  def __init__(self):
    self.sigmas = []

  def __call__(self, variables, x, labels, train):
    del variables, train
    self.sigmas.append(labels)
    return jnp.tanh(x) * 0.3


def test_paper_two_step_grid():
  cfg = default.get_config()
  sig = sampling.sigmas_for(cfg.ct, (0, 420, 640), 640)
  np.testing.assert_allclose(sig, [80.0, 0.5286, 0.002], rtol=2e-4)
  assert sampling.samplers(cfg)["onestep"] == (80.0,)
  with pytest.raises(ValueError, match="increasing indices into the 641"):
    sampling.sigmas_for(cfg.ct, (0, 700), 640)


def test_two_step_costs_two_evaluations_and_matches_formula():
  cfg = default.get_config()
  net = Counting()
  sig = tuple(float(s) for s in sampling.sigmas_for(cfg.ct, (0, 420, 640), 640))
  key = jax.random.key(3)
  shape = (2, 4, 4, 1)
  out = sampling.sample(net, {}, key, shape, sig, cfg.ct)
  assert len(net.sigmas) == 2  # sigma_min at the end adds no evaluation.
  np.testing.assert_allclose(
    np.asarray(net.sigmas[1]), 250 * np.log(sig[1]), rtol=1e-5
  )
  # Recompute by hand: x0 = f(80 z, 80); x = x0 + sqrt(s^2 - smin^2) z'.
  f = lambda x, s: consistency.consistency_fn(
    Counting(), {}, x, jnp.full((2,), s), cfg.ct, train=False
  )
  key, sub = jax.random.split(key)
  x0 = f(80.0 * jax.random.normal(sub, shape), 80.0)
  key, sub = jax.random.split(key)
  std = np.sqrt(sig[1] ** 2 - 0.002**2)
  expected = f(x0 + std * jax.random.normal(sub, shape), sig[1])
  np.testing.assert_allclose(np.asarray(out), np.asarray(expected), rtol=1e-6)


def test_one_step():
  cfg = default.get_config()
  net = Counting()
  out = sampling.sample(
    net, {}, jax.random.key(0), (3, 2, 2, 4), (80.0,), cfg.ct
  )
  assert out.shape == (3, 2, 2, 4) and len(net.sigmas) == 1


def test_to_uint8_and_grid():
  imgs = jnp.array([-1.0, -0.5, 0.0, 1.0, 2.0]).reshape(5, 1, 1, 1)
  u8 = np.asarray(image_files.to_uint8(imgs))
  assert u8.ravel().tolist() == [0, 64, 128, 255, 255]
  tiles = np.arange(1, 6, dtype=np.uint8)[:, None, None, None] * np.ones(
    (5, 2, 3, 1), np.uint8
  )
  grid = image_files.make_grid(tiles, pad=1, fill=0)
  # 2 rows x 3 cols of 2x3 tiles with 1-pixel gutters; row-major order.
  assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 1)
  assert grid[1, 1, 0] == 1 and grid[1, 5, 0] == 2 and grid[4, 1, 0] == 4
  assert grid.sum() == sum(k * 6 for k in range(1, 6))
  assert image_files.make_grid(tiles, pad=0).shape == (4, 9, 1)
