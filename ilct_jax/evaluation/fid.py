"""FID statistics, the Frechet distance and improved precision/recall.

Follows pytorch-fid, which the paper's evaluation uses (ALGORITHM.md
§15): 2048-d pool3 features (evaluation/features.py) -> mean and
covariance (`np.cov(rowvar=False)`, float64) -> the Frechet distance of the
two Gaussians. Reference statistics are `.npz` files with `mu` and `sigma`,
the format pytorch-fid reads (`python -m pytorch_fid a.npz b.npz`).

`precision_recall` is the improved precision/recall of Kynkaanniemi et al.
(NeurIPS 2019, k = 3) on these Inception features. The paper's recall
(`pr50k3_full`, ALGORITHM.md §15) used StyleGAN-ADA's VGG16
features instead, so numbers from here are not directly comparable with it.
"""

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

from ilct_jax import storage

_HIGHEST = jax.lax.Precision.HIGHEST


def stats_from_features(feats: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of features, in float64 (pytorch-fid).

  Args:
    feats: [N, D] features, N >= 2.

  Returns:
    (mu [D], sigma [D, D]).
  """
  feats = np.asarray(feats, np.float64)
  if feats.ndim != 2 or feats.shape[0] < 2:
    raise ValueError(
      f"Statistics need features [N, D] with N >= 2, got shape "
      f"{feats.shape}; pass at least two images' pool3 features."
    )
  return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
  mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6
) -> float:
  """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2).

  d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), computed
  as pytorch-fid's `calculate_frechet_distance` (Dougal Sutherland's stable
  version): if the square root of the product is not finite, eps is added to
  both diagonals and the root is taken again; a complex root is accepted only
  when its diagonal's imaginary part is within 1e-3 of zero.

  Args:
    mu1, sigma1: mean [D] and covariance [D, D] of the first set.
    mu2, sigma2: those of the second set.
    eps: diagonal offset used only when the product is singular.

  Returns:
    The distance (a Python float).
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(
      f"Statistics differ in size: mu {mu1.shape} vs {mu2.shape}, sigma "
      f"{sigma1.shape} vs {sigma2.shape}; compute both with the same network."
    )
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    msg = f"FID: singular covariance product; adding {eps} to the diagonals."
    warnings.warn(msg, stacklevel=2)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(
        f"FID: sqrt(sigma1 sigma2) has an imaginary component of "
        f"{np.max(np.abs(covmean.imag)):.3g}; use more samples than dims."
      )
    covmean = covmean.real
  fid = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
  return float(fid - 2.0 * np.trace(covmean))


def frechet_to(feats: Any, mu_ref: Any, sigma_ref: Any) -> float:
  """FID of features [N, D] against reference statistics.

  N > D (the protocol: 50k > 2048) uses pytorch-fid's sqrtm route
  (fid.frechet_distance). For N <= D the covariance A^T A (A = centred
  features / sqrt(N - 1)) has rank < N, and the nonzero eigenvalues of
  A^T A sigma_ref equal those of A sigma_ref A^T, so Tr sqrt(sigma
  sigma_ref) comes exactly from an N x N eigh instead of a singular D x D
  sqrtm (minutes on a CPU and inaccurate).
  """
  x = np.asarray(feats, np.float64)
  if x.shape[0] > x.shape[1]:
    return frechet_distance(*stats_from_features(x), mu_ref, sigma_ref)
  mu = x.mean(axis=0)
  a = (x - mu) / np.sqrt(x.shape[0] - 1)
  eig = np.linalg.eigvalsh(a @ np.asarray(sigma_ref) @ a.T)
  tr_sqrt, diff = np.sqrt(np.clip(eig, 0.0, None)).sum(), mu - mu_ref
  return float(diff @ diff + np.sum(a * a) + np.trace(sigma_ref) - 2 * tr_sqrt)


def save_stats(path: str, mu: Any, sigma: Any) -> None:
  """Writes `mu` and `sigma` (float64) to an `.npz` that pytorch-fid reads."""
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  _check_stats(mu, sigma, path)
  storage.save_npz(path, mu=mu, sigma=sigma)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads (mu, sigma) from an `.npz` written here or by pytorch-fid."""
  fix = (
    "build them with python -m ilct_jax.evaluation.features "
    f"--inception=... --images=... --out={path} (or use pytorch-fid's .npz)"
  )
  data = storage.load_npz(path, "FID statistics", fix, keys=("mu", "sigma"))
  mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
  _check_stats(mu, sigma, path)
  return mu, sigma


def _check_stats(mu: np.ndarray, sigma: np.ndarray, path: str) -> None:
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(
      f"{path}: mu must be [D] and sigma [D, D], got {mu.shape} and "
      f"{sigma.shape}; recompute them with stats_from_features."
    )


@jax.jit
def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pairwise squared Euclidean distances [R, C] (clamped at 0)."""
  ab = jnp.dot(a, b.T, precision=_HIGHEST)
  aa = jnp.sum(a * a, axis=1)[:, None]
  bb = jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(aa + bb - 2.0 * ab, 0.0)


@jax.jit
def _covered(q: jax.Array, ref: jax.Array, radii2: jax.Array) -> jax.Array:
  """Whether each query lies within some ref point's k-NN ball."""
  return jnp.any(_sq_dists(q, ref) <= radii2[None, :], axis=1)


@functools.partial(jax.jit, static_argnums=3)
def _smallest(rows: jax.Array, cols: jax.Array, n_valid: Any, count: int):
  """The `count` smallest squared distances of each row to valid columns."""
  d = _sq_dists(rows, cols)
  d = jnp.where(jnp.arange(cols.shape[0])[None, :] < n_valid, d, jnp.inf)
  return -jax.lax.top_k(-d, count)[0]


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pads x to a multiple of `size` rows so each kernel compiles once."""
  extra = -x.shape[0] % size
  return np.concatenate([x, np.repeat(x[-1:], extra, 0)]) if extra else x


def _kth_radii2(x: np.ndarray, k: int, block: int) -> np.ndarray:
  """Squared distance of each row to its k-th nearest other row."""
  # The k+1 smallest distances include the point itself (distance 0), as
  # StyleGAN's `kthvalue(k + 1)` does.
  xp, n = _pad_rows(x, block), x.shape[0]
  radii = []
  for i in range(0, xp.shape[0], block):
    best = [
      _smallest(xp[i : i + block], xp[j : j + block], n - j, k + 1)
      for j in range(0, xp.shape[0], block)
    ]
    best = jnp.sort(jnp.concatenate(best, axis=1), axis=1)
    radii.append(np.asarray(best[:, k]))
  return np.concatenate(radii)[:n]


def _coverage(q: np.ndarray, ref: np.ndarray, k: int, block: int) -> float:
  """Fraction of `q` inside the union of `ref`'s k-NN balls."""
  refp, qp = _pad_rows(ref, block), _pad_rows(q, block)
  radii2 = np.full(refp.shape[0], -1.0, np.float32)  # Padding covers none.
  radii2[: ref.shape[0]] = _kth_radii2(ref, k, block)
  hits = []
  for i in range(0, qp.shape[0], block):
    hit = jnp.zeros(block, bool)
    for j in range(0, refp.shape[0], block):
      cols = slice(j, j + block)
      hit |= _covered(qp[i : i + block], refp[cols], radii2[cols])
    hits.append(np.asarray(hit))
  return float(np.mean(np.concatenate(hits)[: q.shape[0]]))


def precision_recall(
  real_feats: Any, fake_feats: Any, k: int = 3, block: int = 4096
) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019).

  Each set's manifold is the union of balls around its points with radius the
  distance to the point's k-th nearest neighbour in the same set. Precision is
  the fraction of fake points inside the real manifold, recall the fraction of
  real points inside the fake one. Distances are computed in `block` x `block`
  tiles on the default device, so 50k x 50k sets fit in memory.

  Args:
    real_feats: [N, D] features of real images.
    fake_feats: [M, D] features of generated images.
    k: neighbourhood size (3, as StyleGAN's `pr50k3`).
    block: tile side.

  Returns:
    (precision, recall) in [0, 1].
  """
  real = np.asarray(real_feats, np.float32)
  fake = np.asarray(fake_feats, np.float32)
  bad_shape = real.ndim != 2 or real.shape[1:] != fake.shape[1:]
  if bad_shape or min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(
      f"precision_recall needs [N, D] and [M, D] features with N, M > k={k}, "
      f"got {real.shape} and {fake.shape}; pass more samples or a smaller k."
    )
  block = min(block, max(real.shape[0], fake.shape[0]))
  return _coverage(fake, real, k, block), _coverage(real, fake, k, block)
