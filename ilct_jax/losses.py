"""Robust consistency losses and the small-sigma diffusion loss.

Owns ALGORITHM.md §6 and §7. The robust functions act on the
per-sample MEAN of squared residuals m (not iCT's sum), exactly as the authors'
code does (`--loss-norm cauchy|huber|gm|l2`, without the `_new` suffix); this
is why c0 = 0.03456 and the c(N) schedule are on the scale they are.
"""

import jax
import jax.numpy as jnp

from ilct_jax import choices

LOSSES = ("cauchy", "huber", "gm", "l2")


def per_sample_mse(a: jax.Array, b: jax.Array) -> jax.Array:
  """m = mean over all non-batch elements of (a - b)^2, shape [B]."""
  diff = (a - b).astype(jnp.float32)
  return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


def robust(name: str, m: jax.Array, c: jax.Array) -> jax.Array:
  """rho(m) for a per-sample mean squared residual m (ALGORITHM.md §6).

  Args:
    name: cauchy | huber | gm | l2.
    m: [B] per-sample mean of squared residuals.
    c: scalar robustness scale.

  Returns:
    [B] robust losses.
  """
  if name == "cauchy":
    # The reference writes log(0.5 m + c^2) - 2 log c; log1p is the same
    # value, and exact for tiny m / c^2.
    return jnp.log1p(m / (2.0 * c**2))
  if name == "huber":
    # iCT pseudo-Huber: sqrt(m + c^2) - c.
    return jnp.sqrt(m + c**2) - c
  if name == "gm":
    # Geman-McClure: 2m / (m + 4c^2).
    return 2.0 * m / (m + 4.0 * c**2)
  validate(name)
  return m  # l2


def consistency_loss(
  name: str,
  online: jax.Array,
  target: jax.Array,
  weight: jax.Array,
  c: jax.Array,
) -> jax.Array:
  """Batch CT loss: mean_B(lambda_i * rho(m_i)) (ALGORITHM.md §6)."""
  return jnp.mean(weight * robust(name, per_sample_mse(online, target), c))


def diffusion_loss(
  online: jax.Array,
  x0: jax.Array,
  sigma: jax.Array,
  mask: jax.Array,
  sigma_data: float,
) -> jax.Array:
  """Masked-mean EDM-weighted denoising loss of selected samples (ALGORITHM §7).

  Per sample: mean((f(x_t, t) - x0)^2) * (1/t^2 + 1/sigma_data^2). The batch
  value is the mean over the selected samples only; an empty selection gives 0
  (the reference would give NaN and skip the step).

  Args:
    online: [B, ...] online consistency output at t.
    x0: [B, ...] clean data.
    sigma: [B] the noise level t of each sample.
    mask: [B] bool, samples with i >= floor(threshold * N).
    sigma_data: data std.

  Returns:
    scalar loss.
  """
  per = per_sample_mse(online, x0) * (1.0 / sigma**2 + 1.0 / sigma_data**2)
  maskf = mask.astype(jnp.float32)
  return jnp.sum(maskf * per) / jnp.maximum(jnp.sum(maskf), 1.0)


def diffusion_mask(
  idx: jax.Array, num: jax.Array, threshold: float
) -> jax.Array:
  """i >= floor(threshold * N): the small-sigma grid part (ALGORITHM §7)."""
  cut = jnp.floor(threshold * jnp.asarray(num, jnp.float32)).astype(jnp.int32)
  return idx >= cut


def validate(name: str) -> None:
  """Raises the one-line error for an unknown loss name."""
  choices.check("ct.loss", name, LOSSES)
