"""Speed and memory figures: `python -m ilct_jax.benchmark --config=...`.

Every timing loop of the project lives here. Modes (`--mode`):
  train    the real jitted train step of the config: compile time, number of
           compiles across a curriculum stage change, steps/s and images/s
           (median over timed steps after warm-up), memory.
  recipes  train-step time of the paper recipe vs the iLCT baseline (and each
           technique switched off alone), as ratios measured in one run.
  model    the UNet alone at train.batch_size: jitted forward, and forward +
           backward of a mean-square loss (compile and median run seconds,
           XLA's flop count), comparable with a plain PyTorch model timing.
  ot       the OT pairing alone (exact vs sinkhorn) at --batch x --dim.
  vae      SD-VAE encode/decode throughput at 256x256.
  fid      InceptionV3 feature-extraction throughput.
Imports no TensorFlow: the figures are about the hot path alone.
"""

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from ilct_jax import consistency, coupling, parallel
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.evaluation import features
from ilct_jax.models import autoencoder, inception, unet
from ilct_jax.models import vae as vae_lib

MODES = ("train", "recipes", "model", "ot", "vae", "fid")


def time_calls(fn: Callable[..., Any], args: tuple, repeats: int):
  """(first call seconds, median seconds of `repeats` more calls).

  Each call is waited for (`block_until_ready`); the first one includes the
  compile unless this process already compiled the same program.
  """
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


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
  mesh = parallel.make_mesh()
  total = max(config.train.num_steps, 1000)
  boundary = _stage_boundary(config, total)
  fn = step_lib.compile_train_step(config, mesh, total)
  state = state_lib.create_train_state(config, mesh)
  state = state.replace(step=state.step + max(boundary - warmup, 0))
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  rng = np.random.default_rng(0)
  batch = jax.device_put(
    rng.normal(0, 0.5, shape).astype(np.float32), parallel.batch_sharding(mesh)
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


def time_model(
  config: ml_collections.ConfigDict, batch: int, steps: int, warmup: int
) -> dict[str, float]:
  """Times the config's UNet alone on the default device.

  Random float32 inputs of shape [batch, *example_shape] and c_noise values;
  random (not zero-init) params so no branch is trivially zero. Two jitted
  programs: the forward (train=False) and the gradient of mean(F(x)^2)
  (train=True), i.e. one forward + one backward as in a plain
  `loss.backward()` timing.

  Args:
    config: the full config (`model.*`, `data.*`).
    batch: batch size.
    steps: timed calls of each program (median reported).
    warmup: untimed calls after the compile.

  Returns:
    fwd_s / fwd_bwd_s (median seconds), their compile seconds (lower +
    compile), XLA's flop estimates, param count and peak RSS (MiB).
  """
  model = state_lib.create_model(config)
  shape = (batch, *state_lib.example_shape(config))
  kx, kp = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, shape, jnp.float32)
  labels = 250.0 * jnp.log(jnp.linspace(0.01, 10.0, batch, dtype=jnp.float32))
  abstract = jax.eval_shape(
    lambda k: model.init(k, x, labels, train=False)["params"], kp
  )
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(kp, len(leaves))
  params = jax.jit(
    lambda ks: jax.tree.unflatten(
      treedef,
      [
        0.02 * jax.random.normal(k, a.shape, a.dtype)
        for k, a in zip(ks, leaves)
      ],
    )
  )(keys)

  def loss(p, x, labels):
    y = model.apply({"params": p}, x, labels, train=True)
    return jnp.mean(jnp.square(y))

  programs = {
    "fwd": lambda p, x, n: model.apply({"params": p}, x, n, train=False),
    "fwd_bwd": jax.grad(loss),
  }
  figures = {"batch": float(batch), "params": float(unet.count_params(params))}
  for name, fn in programs.items():
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(params, x, labels).compile()
    figures[f"{name}_compile_s"] = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    figures[f"{name}_gflop"] = float((cost or {}).get("flops", 0.0)) / 1e9
    for _ in range(max(warmup, 1)):
      jax.block_until_ready(compiled(params, x, labels))
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, x, labels))
      times.append(time.perf_counter() - start)
    figures[f"{name}_s"] = statistics.median(times)
    figures[f"{name}_min_s"] = min(times)
  figures["bwd_s"] = figures["fwd_bwd_s"] - figures["fwd_s"]
  figures["peak_rss_mib"] = (
    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  )
  return figures


_OT_SOLVERS = {
  "exact": lambda x, z: coupling.assignment(x, z, method="exact"),
  "exact_crouse": coupling.crouse_assignment,
  "sinkhorn": lambda x, z: coupling.assignment(x, z, method="sinkhorn"),
}


def time_ot(batch: int = 128, dim: int = 4096, repeats: int = 10) -> dict:
  """Times the jitted assignment solvers on the default device.

  Args:
    batch: batch size B.
    dim: flattened sample size D (4096 = 32x32x4 CelebA-HQ latents).
    repeats: timed calls per solver after one compile call.

  Returns:
    For each solver `<name>_median_s` (median seconds of one call) and
    `<name>_first_call_s` (the first call, which compiles), plus the device
    and the shape.
  """
  key_x, key_z = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (batch, dim), jnp.float32)
  z = jax.random.normal(key_z, (batch, dim), jnp.float32)
  device = jax.devices()[0]
  figures = {
    "device": f"{device} ({device.device_kind})",
    "batch": batch,
    "dim": dim,
  }
  for name, fn in _OT_SOLVERS.items():
    first, median = time_calls(jax.jit(fn), (x, z), repeats)
    figures[f"{name}_first_call_s"] = first
    figures[f"{name}_median_s"] = median
  return figures


def time_vae(
  image_size: int = 256, batch: int = 4, repeats: int = 3
) -> dict[str, Any]:
  """Encode/decode throughput of the SD VAE (random params), one device.

  Returns:
    images/s for encode and decode, the compile (first-call) seconds, the
    parameter count and the device.
  """
  vae = vae_lib.AutoencoderKL()
  key_img, key_z = jax.random.split(jax.random.key(0))
  params = vae_lib.random_params(vae)
  codec = autoencoder.make_codec(
    vae, params, parallel.make_mesh(jax.devices()[:1])
  )
  shape = (batch, image_size, image_size, vae.in_channels)
  images = jax.random.uniform(key_img, shape, minval=-1.0, maxval=1.0)
  enc_first, enc_s = time_calls(codec.encode, (images,), repeats)
  latents = codec.sample_latents(key_z, *codec.encode(images))
  dec_first, dec_s = time_calls(codec.decode, (latents,), repeats)
  return {
    "device": str(jax.devices()[0]),
    "image_size": image_size,
    "batch": batch,
    "encode_images_per_s": batch / enc_s,
    "decode_images_per_s": batch / dec_s,
    "encode_first_call_s": enc_first,
    "decode_first_call_s": dec_first,
    "param_count": vae_lib.param_count(vae),
  }


def time_fid_features(batch: int = 16, repeats: int = 3) -> dict[str, Any]:
  """Feature-extraction speed on 256x256 uint8 inputs (random weights).

  Returns:
    images_per_s, seconds_per_batch, compile_s, device and projected_50k_s
    (the wall time of the features of a 50k-sample FID).
  """
  module = inception.InceptionV3()
  f = features.feature_fn(module, inception.init_variables(module))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
  compile_s, per_batch = time_calls(f, (images,), repeats)
  rate = batch / per_batch
  return {
    "device": jax.devices()[0].device_kind,
    "batch": batch,
    "compile_s": compile_s,
    "seconds_per_batch": per_batch,
    "images_per_s": rate,
    "projected_50k_s": 50_000 / rate,
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
  f = flags.FLAGS
  config, mode = f.config, f.mode
  dev = jax.devices()[0]
  print(f"# device: {dev.platform} {dev.device_kind} x{jax.device_count()}")
  if mode == "train":
    r = time_train_step(config, f.steps, f.warmup)
    _print_table({"train step": r}, list(r))
  elif mode == "recipes":
    rows = compare_recipes(config, f.steps, f.warmup)
    base = rows["paper recipe"]["step_s"]
    for r in rows.values():
      r["time_vs_recipe"] = r["step_s"] / base
    _print_table(rows, ["step_s", "images_per_s", "compiles", "time_vs_recipe"])
  elif mode == "model":
    r = time_model(config, config.train.batch_size, f.steps, f.warmup)
    _print_table({"model": r}, list(r))
  elif mode == "ot":
    r = time_ot(batch=f.batch, dim=f.dim)
    _print_table({"ot": r}, list(r))
  elif mode == "vae":
    r = time_vae()
    _print_table({"sd-vae": r}, list(r))
  else:
    r = time_fid_features()
    _print_table({"inception": r}, list(r))
  assert "tensorflow" not in sys.modules, "TensorFlow leaked onto the hot path"


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program)."""
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Config to benchmark.", lock_config=True
  )
  flags.DEFINE_enum("mode", "train", MODES, "What to time.")
  flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up).")
  flags.DEFINE_integer("warmup", 2, "Untimed warm-up steps.")
  flags.DEFINE_integer("batch", 128, "Batch for --mode=ot.")
  flags.DEFINE_integer("dim", 4096, "Flattened size for --mode=ot.")


if __name__ == "__main__":
  jax.config.update("jax_threefry_partitionable", True)
  define_flags()
  app.run(main)
