"""Latent normalization: per-element statistics and the exact inverse.

ALGORITHM 10: stored latents are `posterior.sample() * 0.18215`. The reference
(`--normalize-matrix`) divides by 0.18215, subtracts a PER-ELEMENT mean and
divides by a per-element std (both [32, 32, 4] in NHWC, computed over the whole
training set, std unbiased), then scales by 0.5 so the data std is
sigma_data = 0.5:  x0 = 0.5 * (stored / 0.18215 - mean) / std.
Its inverse gives the unscaled latent that `vae.decode` takes:
z = x0 * std / 0.5 + mean (no second division by 0.18215).
Statistics are stored as `.npz` with arrays `mean` and `std` (never pickle).
"""

import os

import jax.numpy as jnp
import numpy as np

SCALING_FACTOR = 0.18215  # SD KL-f8 latent scaling factor.
TARGET_STD = 0.5  # sigma_data: normalized latents have per-element std 0.5.


def normalize(stored, mean, std):
  """Stored (scaled) latents -> training data x0 with std 0.5 per element."""
  return TARGET_STD * (stored / SCALING_FACTOR - mean) / std


def denormalize(x0, mean, std):
  """Training-space x0 -> the unscaled latent z that the VAE decoder takes."""
  return x0 * std / TARGET_STD + mean


def to_stored(x0, mean, std):
  """Training-space x0 -> stored (scaled) latents; inverse of normalize."""
  return denormalize(x0, mean, std) * SCALING_FACTOR


def compute_stats(unscaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-element mean and unbiased std over axis 0 of unscaled latents.

  Args:
    unscaled: [N, H, W, C] latents already divided by SCALING_FACTOR.

  Returns:
    (mean, std), each float32 [H, W, C] (float64 accumulation).
  """
  x = np.asarray(unscaled, np.float64)
  if x.shape[0] < 2:
    raise ValueError("latent statistics need at least 2 latents")
  return (
    x.mean(axis=0).astype(np.float32),
    x.std(axis=0, ddof=1).astype(np.float32),
  )


def save_stats(path: str, mean: np.ndarray, std: np.ndarray) -> None:
  """Writes mean/std to an `.npz` (atomically: temp file, then rename)."""
  tmp = path + ".tmp.npz"
  np.savez(
    tmp, mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32)
  )
  os.replace(tmp, path)


def load_stats(
  path: str, shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Reads mean/std and checks them against the latent shape [H, W, C]."""
  if not path or not os.path.exists(path):
    raise FileNotFoundError(
      f"latent statistics {path!r} not found; run `python -m "
      "ilct_jax.encode_latents` first or set data.stats_path"
    )
  with np.load(path) as f:
    missing = {"mean", "std"} - set(f.files)
    if missing:
      raise ValueError(
        f"stats file {path} lacks {sorted(missing)}; it must hold 'mean' and "
        "'std' arrays (re-run encode_latents)"
      )
    mean, std = f["mean"].astype(np.float32), f["std"].astype(np.float32)
  if mean.shape != std.shape or (shape is not None and mean.shape != shape):
    raise ValueError(
      f"stats file {path} has mean {mean.shape} / std {std.shape} but the "
      f"latents are {shape}; use the stats made for this dataset and VAE"
    )
  if not np.all(std > 0):
    raise ValueError(f"stats file {path} has non-positive std entries")
  return mean, std


def as_jnp(mean: np.ndarray, std: np.ndarray):
  """Stats as float32 device arrays."""
  return jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
