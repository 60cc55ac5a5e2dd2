"""One-step and multistep consistency sampling (jit-able).

ALGORITHM.md §14: x_T = sigma_max * z; one step is f(x_T, sigma_max). Multistep
walks given indices of a Karras grid of `grid_scales + 1` levels: denoise,
then re-noise to the next level with sqrt(s^2 - s_min^2) fresh noise, and
denoise again; the final level s_min adds no noise, so indices (0, 420, 640) on
the 641 grid cost 2 network evaluations (sigma_420 = 0.5286).
A class-conditional model samples given classes, optionally with
classifier-free guidance (`Guide`, ALGORITHM.md §21).
"""

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Guide:
  """Classifier-free guidance (ALGORITHM.md §21): F = F(null) + scale *
  (F(class) - F(null)) on the first `channels` channels of the network
  output (-1: all), the conditional output on the rest, as the authors'
  DiT.forward_with_cfg; scale 1 is plain conditional sampling."""

  scale: float
  channels: int
  null_label: int


def guide_of(config: ml_collections.ConfigDict) -> Guide | None:
  """The guidance of a class-conditional config (None: unconditional)."""
  classes = config.model.get("num_classes", 0)
  if not classes:
    return None
  s = config.sample
  return Guide(float(s.cfg_scale), int(s.cfg_channels), int(classes))


def grid_labels(config: ml_collections.ConfigDict, num: int):
  """Labels of a sample grid: sample.label for all, or (-1) sample i of
  class i mod num_classes; None for an unconditional model."""
  classes = config.model.get("num_classes", 0)
  if not classes:
    return None
  label = config.sample.label
  if label >= 0:
    return jnp.full((num,), label, jnp.int32)
  return jnp.arange(num, dtype=jnp.int32) % classes


def random_labels(config: ml_collections.ConfigDict, key: jax.Array, num: int):
  """FID's labels: sample.label for all, or (-1) uniform random classes, as
  the authors' test script draws them; None when unconditional."""
  classes = config.model.get("num_classes", 0)
  if not classes:
    return None
  if config.sample.label >= 0:
    return jnp.full((num,), config.sample.label, jnp.int32)
  return jax.random.randint(key, (num,), 0, classes, jnp.int32)


def guided(
  apply_fn: Callable[..., jax.Array],
  labels: jax.Array | None,
  guide: Guide | None,
) -> Callable[..., jax.Array]:
  """`apply_fn` conditioned on `labels`, with classifier-free guidance."""
  if labels is None:
    return apply_fn
  if guide is None or guide.scale == 1.0:
    return functools.partial(apply_fn, labels=labels)

  def fn(variables, x, noise_labels, **kwargs):
    null = jnp.full_like(labels, guide.null_label)
    both = apply_fn(
      variables,
      jnp.concatenate([x, x]),
      jnp.concatenate([noise_labels, noise_labels]),
      labels=jnp.concatenate([labels, null]),
      **kwargs,
    )
    cond, uncond = jnp.split(both, 2)
    out = uncond + guide.scale * (cond - uncond)
    if 0 <= guide.channels < out.shape[-1]:
      out = jnp.concatenate(
        [out[..., : guide.channels], cond[..., guide.channels :]], -1
      )
    return out

  return fn


def sample(
  apply_fn: Callable[..., jax.Array],
  params: PyTree,
  key: jax.Array,
  shape: Sequence[int],
  sigmas: Sequence[float],
  ct: ml_collections.ConfigDict,
  labels: jax.Array | None = None,
  guide: Guide | None = None,
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
    labels: [B] classes of a class-conditional model (None: unconditional).
    guide: classifier-free guidance (`guide_of`); None or scale 1: none.

  Returns:
    [B, H, W, C] float32 samples in data space (normalized latents or pixels).
  """
  net = guided(apply_fn, labels, guide)
  f = lambda x, s: consistency.consistency_fn(
    net, params, x, jnp.full((shape[0],), s, jnp.float32), ct, train=False
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
  guide: Guide | None,
) -> Callable[..., jax.Array]:
  def run(params: PyTree, key: jax.Array, labels=None) -> jax.Array:
    return sample(model.apply, params, key, shape, sigmas, ct, labels, guide)

  return jax.jit(run, out_shardings=out_sharding)


def make_sampler(
  model: Any,
  ct: ml_collections.ConfigDict,
  shape: Sequence[int],
  sigmas: Sequence[float],
  out_sharding: jax.sharding.Sharding | None = None,
  guide: Guide | None = None,
) -> Callable[..., jax.Array]:
  """jit(params, key[, labels]) -> samples, built once per program and then
  reused (labels and `guide` for a class-conditional model).

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
    guide,
  )
