"""Speed and memory figures: `python -m ilct_jax.benchmark --config=...`.

Modes (`--mode`):
  train    the real jitted train step of the config: compile time, number of
           compiles across a curriculum stage change, steps/s and images/s
           (median over timed steps after warm-up), memory.
  recipes  train-step time of the paper recipe vs the iLCT baseline (and each
           technique switched off alone), as ratios measured in one run.
  ot       the OT pairing alone (exact vs sinkhorn) at --batch x --dim.
  vae      SD-VAE encode/decode throughput at 256x256.
  fid      InceptionV3 feature-extraction throughput.
Imports no TensorFlow: the figures are about the hot path alone.
"""

import resource
import statistics
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ilct_jax import consistency
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib

_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/demo.py", "Config to benchmark.", lock_config=True
)
_MODE = flags.DEFINE_enum(
  "mode", "train", ["train", "recipes", "ot", "vae", "fid"], "What to time."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed warm-up steps.")
_BATCH = flags.DEFINE_integer("batch", 128, "Batch for --mode=ot.")
_DIM = flags.DEFINE_integer("dim", 4096, "Flattened size for --mode=ot.")


def _stage_boundary(config: ml_collections.ConfigDict, total: int) -> int:
  """First step of the second curriculum stage."""
  ct = config.ct
  first = consistency.num_scales(0, total, ct.start_scales, ct.end_scales)
  for k in range(total):
    n = consistency.num_scales(k, total, ct.start_scales, ct.end_scales)
    if int(n) != int(first):
      return k
  return total


def time_train_step(
  config: ml_collections.ConfigDict, steps: int = 10, warmup: int = 2
) -> dict[str, float]:
  """Times the config's real train step on all local devices.

  The state starts `warmup` steps before the first curriculum stage change,
  so the timed steps cross it; `compiles` counts jit cache entries after.
  """
  mesh = step_lib.make_mesh()
  total = max(config.train.num_steps, 1000)
  boundary = _stage_boundary(config, total)
  fn = step_lib.compile_train_step(config, mesh, total)
  state = state_lib.create_train_state(config, mesh)
  state = state.replace(step=state.step + max(boundary - warmup, 0))
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  rng = np.random.default_rng(0)
  batch = jax.device_put(
    rng.normal(0, 0.5, shape).astype(np.float32), step_lib.batch_sharding(mesh)
  )
  t0 = time.perf_counter()
  state, metrics = fn(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t0
  n_before = float(metrics["num_scales"])
  for _ in range(warmup - 1):
    state, metrics = fn(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  mem = (
    fn.lower(state, batch).compile().memory_analysis()
  )  # Cached lowering; does not add a jit cache entry.
  return {
    "compile_s": compile_s,
    "compiles": float(fn._cache_size()),  # noqa: SLF001 - jax's own counter.
    "num_scales_start": n_before,
    "num_scales_end": float(metrics["num_scales"]),
    "step_s": step_s,
    "steps_per_s": 1.0 / step_s,
    "images_per_s": config.train.batch_size / step_s,
    "temp_mib": (mem.temp_size_in_bytes / 2**20) if mem else float("nan"),
    "args_mib": (mem.argument_size_in_bytes / 2**20) if mem else float("nan"),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


RECIPE_VARIANTS = {
  "paper recipe": {},
  "- OT coupling": {"coupling.method": "none"},
  "- diffusion loss": {"ct.diffusion_loss": False},
  "- NsLN (GroupNorm)": {"model.norm": "group"},
  "iLCT baseline": {
    "coupling.method": "none",
    "ct.diffusion_loss": False,
    "model.norm": "group",
    "ct.loss": "huber",
    "ct.c_schedule": "constant",
  },
}


def _with(config: ml_collections.ConfigDict, overrides: dict):
  c = ml_collections.ConfigDict(config.to_dict())
  for path, value in overrides.items():
    node = c
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def compare_recipes(config, steps: int, warmup: int) -> dict[str, dict]:
  """Step time of each RECIPE_VARIANTS entry, measured in one process."""
  return {
    name: time_train_step(_with(config, ov), steps, warmup)
    for name, ov in RECIPE_VARIANTS.items()
  }


def _print_table(rows: dict[str, dict], keys: list[str]) -> None:
  print("| variant | " + " | ".join(keys) + " |")
  print("|---" * (len(keys) + 1) + "|")
  for name, r in rows.items():
    vals = [
      f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys
    ]
    print(f"| {name} | " + " | ".join(vals) + " |")


def main(argv):
  del argv
  config, mode = _CONFIG.value, _MODE.value
  dev = jax.devices()[0]
  print(f"# device: {dev.platform} {dev.device_kind} x{jax.device_count()}")
  if mode == "train":
    r = time_train_step(config, _STEPS.value, _WARMUP.value)
    _print_table({"train step": r}, list(r))
  elif mode == "recipes":
    rows = compare_recipes(config, _STEPS.value, _WARMUP.value)
    base = rows["paper recipe"]["step_s"]
    for r in rows.values():
      r["time_vs_recipe"] = r["step_s"] / base
    _print_table(rows, ["step_s", "images_per_s", "compiles", "time_vs_recipe"])
  elif mode == "ot":
    from ilct_jax import coupling

    r = coupling.benchmark(batch=_BATCH.value, dim=_DIM.value)
    _print_table({"ot": r}, list(r))
  elif mode == "vae":
    from ilct_jax import autoencoder

    r = autoencoder.benchmark()
    _print_table({"sd-vae": r}, list(r))
  else:
    from ilct_jax import fid

    r = fid.benchmark()
    _print_table({"inception": r}, list(r))
  assert "tensorflow" not in sys.modules, "TensorFlow leaked onto the hot path"


if __name__ == "__main__":
  jax.config.update("jax_threefry_partitionable", True)
  app.run(main)
