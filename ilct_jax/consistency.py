"""Consistency-training schedules and the consistency parametrization.

Owns every formula of ALGORITHM.md §1-§4 and the c(N) schedule of
section 6: the Karras noise grid, the iCT doubling curriculum N(k), the
lognormal-interval index sampler, the loss weights, c_skip/c_out/c_in/c_noise
and the consistency function f(x, sigma). Everything that depends on the
training step is computed with `jnp` from a traced step counter, and the grid is
held at a fixed maximal length and masked, so a curriculum stage change never
recompiles the train step.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ilct_jax import choices

WEIGHTINGS = ("ict", "karras", "uniform")
INDEX_SAMPLERS = ("lognormal", "uniform")
C_SCHEDULES = ("adaptive", "constant")

# iCT's robust-loss constant c0 = 0.00054 * sqrt(d) (Song & Dhariwal 2023),
# applied by the reference code to the per-sample MEAN of squared residuals
# (ALGORITHM.md §6, "scale note").
C0_PER_SQRT_DIM = 0.00054
# Adaptive c(N) = exp(-1.15 ln(N - 1) - 0.85), fitted by the authors to the
# std of TD residuals (LCT `--c-by-loss-std`, ALGORITHM.md §6).
C_FIT_SLOPE = -1.15
C_FIT_INTERCEPT = -0.85


def karras_grid(
  num: int | jax.Array,
  length: int,
  sigma_min: float,
  sigma_max: float,
  rho: float,
) -> jax.Array:
  """Karras sigmas from large to small, padded to a fixed length.

  sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for
  i < N (ALGORITHM.md §2); entries i >= N repeat sigma_min so indexing stays
  safe.

  Args:
    num: N, the number of levels (may be traced).
    length: static array length (>= the largest N used).
    sigma_min: smallest sigma.
    sigma_max: largest sigma.
    rho: grid exponent.

  Returns:
    float32 [length] grid.
  """
  i = jnp.arange(length, dtype=jnp.float32)
  frac = jnp.minimum(i / (jnp.asarray(num, jnp.float32) - 1.0), 1.0)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (hi + frac * (lo - hi)) ** rho


def num_scales(
  step: int | jax.Array, total_steps: int, start: int, end: int
) -> jax.Array:
  """iCT doubling curriculum N(k) (LCT `improve_scale_fn`, ALGORITHM.md §2).

  K' = floor(K / (log2(floor(s1/s0)) + 1)), N = min(s0 * 2^floor(k/K'), s1) + 1.

  Args:
    step: global step k (may be traced).
    total_steps: K, total training steps.
    start: s0.
    end: s1.

  Returns:
    int32 scalar N.
  """
  stages = int(np.floor(np.log2(np.floor(end / start)))) + 1
  per_stage = max(total_steps // stages, 1)
  doublings = jnp.asarray(step, jnp.int32) // per_stage
  # Clamp the exponent so 2^k cannot overflow int32 on very long runs.
  doublings = jnp.minimum(doublings, stages)
  scales = jnp.minimum(start * (2**doublings), end)
  return (scales + 1).astype(jnp.int32)


def index_probs(
  sigmas: jax.Array, num: jax.Array, p_mean: float, p_std: float
) -> jax.Array:
  """Lognormal interval masses p_i, i in 0..N-2; else zero (ALGORITHM §3).

  p_i is proportional to erf((ln s_i - Pm)/(sqrt2 Ps)) -
  erf((ln s_{i+1} - Pm)/(sqrt2 Ps)), the lognormal mass of (s_{i+1}, s_i].
  """
  u = (jnp.log(sigmas) - p_mean) / (jnp.sqrt(2.0) * p_std)
  erf, erfc = jax.scipy.special.erf, jax.scipy.special.erfc
  # In the tails erf saturates at +-1 in float32; the equal differences of
  # erfc keep full relative precision there (u is decreasing in i).
  hi, lo = u[:-1], u[1:]
  mass = jnp.where(
    lo > 0,
    erfc(lo) - erfc(hi),
    jnp.where(hi < 0, erfc(-hi) - erfc(-lo), erf(hi) - erf(lo)),
  )
  valid = jnp.arange(mass.shape[0]) < num - 1
  mass = jnp.where(valid, mass, 0.0)
  return mass / jnp.sum(mass)


def sample_indices(
  key: jax.Array,
  batch: int,
  sigmas: jax.Array,
  num: jax.Array,
  ct: ml_collections.ConfigDict,
) -> jax.Array:
  """Draws the pair index i in {0..N-2} per sample (ALGORITHM.md §3)."""
  if ct.index_sampler == "lognormal":
    probs = index_probs(sigmas, num, ct.p_mean, ct.p_std)
    logits = jnp.where(probs > 0, jnp.log(jnp.maximum(probs, 1e-38)), -jnp.inf)
    return jax.random.categorical(key, logits, shape=(batch,))
  choices.check("ct.index_sampler", ct.index_sampler, INDEX_SAMPLERS)
  return jax.random.randint(key, (batch,), 0, num - 1)


def loss_weight(
  name: str, t: jax.Array, r: jax.Array, sigma_data: float
) -> jax.Array:
  """Per-sample CT loss weight lambda (ALGORITHM.md §4)."""
  if name == "ict":
    return 1.0 / (t - r)
  if name == "karras":
    return 1.0 / t**2 + 1.0 / sigma_data**2
  choices.check("ct.weighting", name, WEIGHTINGS)
  return jnp.ones_like(t)  # uniform


def c0(dim: int) -> float:
  """iCT's c0 = 0.00054 * sqrt(d); 0.03456 for a 32x32x4 latent."""
  return C0_PER_SQRT_DIM * float(np.sqrt(dim))


def robust_c(num: jax.Array, ct: ml_collections.ConfigDict, dim: int):
  """The robust-loss scale c for the current N (ALGORITHM.md §6).

  `adaptive`: c0 for the first stage (N <= s0 + 1), then
  exp(-1.15 ln(N - 1) - 0.85). `constant`: (ct.c or c0) * ct.c_mult.
  """
  choices.check("ct.c_schedule", ct.c_schedule, C_SCHEDULES)
  base = ct.c if ct.c > 0 else c0(dim)
  if ct.c_schedule == "constant":
    return jnp.asarray(base * ct.c_mult, jnp.float32)
  n = jnp.asarray(num, jnp.float32)
  fitted = jnp.exp(C_FIT_SLOPE * jnp.log(n - 1.0) + C_FIT_INTERCEPT)
  return jnp.where(num > ct.start_scales + 1, fitted, base).astype(jnp.float32)


def scalings(sigma: jax.Array, ct: ml_collections.ConfigDict):
  """c_skip, c_out, c_in with the (sigma - sigma_min) shift (ALGORITHM §1)."""
  sd, smin = ct.sigma_data, ct.sigma_min
  c_skip = sd**2 / ((sigma - smin) ** 2 + sd**2)
  c_out = (sigma - smin) * sd / jnp.sqrt(sigma**2 + sd**2)
  c_in = 1.0 / jnp.sqrt(sigma**2 + sd**2)
  return c_skip, c_out, c_in


def noise_labels(sigma: jax.Array) -> jax.Array:
  """c_noise = 250 ln(sigma + 1e-44) = 1000 * 0.25 ln(sigma) (ALGORITHM §1)."""
  return 250.0 * jnp.log(sigma + 1e-44)


def consistency_fn(
  apply_fn: Callable[..., jax.Array],
  params: Any,
  x: jax.Array,
  sigma: jax.Array,
  ct: ml_collections.ConfigDict,
  **apply_kwargs: Any,
) -> jax.Array:
  """f(x, s) = c_skip x + c_out F(c_in x, c_noise(s)) for per-sample sigma.

  Args:
    apply_fn: `model.apply`-style callable (params, x, noise_labels, ...).
    params: network parameters.
    x: [B, H, W, C] noisy input.
    sigma: [B] noise levels.
    ct: the `ct` config group.
    **apply_kwargs: passed to `apply_fn` (train flag, rngs).

  Returns:
    [B, H, W, C] float32 denoised estimate.
  """
  c_skip, c_out, c_in = scalings(sigma, ct)
  bc = lambda v: v[:, None, None, None]
  out = apply_fn(
    {"params": params}, bc(c_in) * x, noise_labels(sigma), **apply_kwargs
  )
  return bc(c_skip) * x + bc(c_out) * out.astype(jnp.float32)


def validate(ct: ml_collections.ConfigDict) -> None:
  """Raises a one-line ValueError for an unknown or inconsistent ct field."""
  for field, names in (
    ("weighting", WEIGHTINGS),
    ("index_sampler", INDEX_SAMPLERS),
    ("c_schedule", C_SCHEDULES),
  ):
    choices.check(f"ct.{field}", ct[field], names)
  if not 0 < ct.start_scales <= ct.end_scales:
    raise ValueError(
      f"ct.start_scales={ct.start_scales} and ct.end_scales={ct.end_scales}"
      " must satisfy 0 < start_scales <= end_scales"
    )
  if not 0 < ct.sigma_min < ct.sigma_max:
    raise ValueError("ct.sigma_min must be positive and below ct.sigma_max")
