"""One-step and multistep consistency sampling (jit-able).

ALGORITHM.md §14: x_T = sigma_max * z; one step is f(x_T, sigma_max). Multistep
walks given indices of a Karras grid of `grid_scales + 1` levels: denoise,
then re-noise to the next level with sqrt(s^2 - s_min^2) fresh noise, and
denoise again; the final level s_min adds no noise, so indices (0, 420, 640) on
the 641 grid cost 2 network evaluations (sigma_420 = 0.5286).
"""

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ilct_jax import consistency

PyTree = Any


def sigmas_for(
  ct: ml_collections.ConfigDict, ts: Sequence[int], grid_scales: int
) -> np.ndarray:
  """The sigmas visited by a multistep sampler: grid[ts] on N = scales + 1."""
  n = grid_scales + 1
  bad = [t for t in ts if not 0 <= t < n]
  if bad or list(ts) != sorted(ts) or len(ts) < 1:
    raise ValueError(
      f"sample.ts={tuple(ts)} must be increasing indices into the "
      f"{n}-level grid (0..{n - 1}); fix sample.ts or sample.grid_scales"
    )
  grid = consistency.karras_grid(n, n, ct.sigma_min, ct.sigma_max, ct.rho)
  return np.asarray(grid)[np.asarray(ts)]


def sample(
  apply_fn: Callable[..., jax.Array],
  params: PyTree,
  key: jax.Array,
  shape: Sequence[int],
  sigmas: Sequence[float],
  ct: ml_collections.ConfigDict,
) -> jax.Array:
  """Consistency sampling through `sigmas` (first = start level).

  `sigmas` = [sigma_max] is the one-step sampler. Each later entry above
  sigma_min adds one network evaluation; a trailing sigma_min is free.

  Args:
    apply_fn: the network's apply.
    params: parameters (e.g. an EMA).
    key: PRNG key.
    shape: [B, H, W, C] of the samples.
    sigmas: static noise levels, decreasing.
    ct: the `ct` config group.

  Returns:
    [B, H, W, C] float32 samples in data space (normalized latents or pixels).
  """
  f = lambda x, s: consistency.consistency_fn(
    apply_fn, params, x, jnp.full((shape[0],), s, jnp.float32), ct, train=False
  )
  key, sub = jax.random.split(key)
  x = f(sigmas[0] * jax.random.normal(sub, shape, jnp.float32), sigmas[0])
  for s in sigmas[1:]:
    std = float(np.sqrt(max(s**2 - ct.sigma_min**2, 0.0)))
    if std == 0.0:
      continue  # Re-noising to sigma_min adds nothing: no extra evaluation.
    key, sub = jax.random.split(key)
    x = f(x + std * jax.random.normal(sub, shape, jnp.float32), s)
  return x


def samplers(
  config: ml_collections.ConfigDict,
) -> dict[str, tuple[float, ...]]:
  """Named samplers: 'onestep' and 'twostep' (config.sample.ts) sigmas."""
  ct, s = config.ct, config.sample
  multi = tuple(float(v) for v in sigmas_for(ct, s.ts, s.grid_scales))
  return {"onestep": (float(ct.sigma_max),), "twostep": multi}


@functools.lru_cache(maxsize=32)
def _compiled_sampler(
  model: Any,
  ct: ml_collections.FrozenConfigDict,
  shape: tuple[int, ...],
  sigmas: tuple[float, ...],
  out_sharding: jax.sharding.Sharding | None,
) -> Callable[[PyTree, jax.Array], jax.Array]:
  def run(params: PyTree, key: jax.Array) -> jax.Array:
    return sample(model.apply, params, key, shape, sigmas, ct)

  return jax.jit(run, out_shardings=out_sharding)


def make_sampler(
  model: Any,
  ct: ml_collections.ConfigDict,
  shape: Sequence[int],
  sigmas: Sequence[float],
  out_sharding: jax.sharding.Sharding | None = None,
) -> Callable[[PyTree, jax.Array], jax.Array]:
  """jit(params, key) -> samples, built once per program and then reused.

  The cache key is everything that changes the compiled program: the model
  (a frozen linen module, compared by its attributes), the `ct` group, the
  sample shape, the sigmas and the output sharding. Sample grids during
  training, --mode=sample, evaluation and the notebook therefore compile
  each sampler once per process.
  """
  return _compiled_sampler(
    model,
    ml_collections.FrozenConfigDict(ct),
    tuple(int(s) for s in shape),
    tuple(float(s) for s in sigmas),
    out_sharding,
  )
