"""Speed and memory figures: `python -m ilct_jax.benchmark --config=...`.

The timing loops of the whole step live here, those of its parts in
bench_parts.py (the FLOP and memory accounting they report is flops.py).
Modes (`--mode`):
  train    the config's jitted train step: init and compile seconds, compiles
           across a stage change, steps/s, images/s, model FLOPs beside
           XLA's, MFU, OT share, memory, projected days of each paper run.
  recipes  train-step time of the paper recipe vs the iLCT baseline (and each
           technique switched off alone), as ratios measured in one run.
  archs    train step of the paper's UNet beside the authors' DiT-B/2 on the
           config's data: step time, model FLOPs, MFU, state memory.
  model    the UNet alone at train.batch_size: forward, and forward +
           backward of a mean-square loss (as a PyTorch `backward()` timing).
  ot       the OT pairing alone (exact, Crouse up to 512, sinkhorn) at 128,
           512, 1536, 4096 examples (or --batch), share of --step_s.
  memory   the step compiled against an abstract state (nothing allocated or
           run): XLA's per-device memory and FLOPs (e.g. with model.remat).
  eval     the fused FID program (sample -> decode -> uint8 -> features) per
           sampler: images/s and projected hours of a 50k-sample FID.
  vae      SD-VAE encode/decode throughput at 256x256.
  fid      InceptionV3 feature-extraction throughput.
Imports no TensorFlow: the figures are about the hot path alone.
"""

from ilct_jax import hostmem

if __name__ == "__main__":
  hostmem.use_huge_pages()  # First: re-executes once, before heavy imports.

import statistics
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from ilct_jax import consistency, kernels, parallel
from ilct_jax import setup as setup_lib
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.config_files import default_path, resolve_sys_argv
from ilct_jax.lab import flops
from ilct_jax.lab.bench_parts import (
  _peak_rss_mib,
  print_table,
  time_calls,
  time_eval,
  time_fid_features,
  time_model,
  time_ot,
  time_ot_sizes,
  time_vae,
)
from ilct_jax.models import unet

MODES = ("train", "recipes", "archs", "model", "ot", "memory", "eval", "vae")
MODES += ("fid",)
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax's name.
PyTree = Any


def _stage_boundary(config: ml_collections.ConfigDict, total: int) -> int:
  """First step of the second curriculum stage."""
  ct = config.ct
  first = consistency.num_scales(0, total, ct.start_scales, ct.end_scales)
  for k in range(total):
    n = consistency.num_scales(k, total, ct.start_scales, ct.end_scales)
    if int(n) != int(first):
      return k
  return total


def _step_inputs(config: ml_collections.ConfigDict, mesh, total: int):
  """(compiled step, fresh state, Gaussian batch, init and compile seconds).

  As a fresh training run does (train.train_and_evaluate): compiled ahead
  of time for the abstract state, keeping no jitted function (a live one
  keeps its lowering: 0.3 GiB for the paper step), trimmed, then the state.
  """
  setup = setup_lib.build(config, mesh)
  mesh = setup.mesh  # With the "fsdp" axis of train.fsdp > 1.
  compiled, compile_s = step_lib.compile_ahead(
    config, mesh, setup.abstract_state, total
  )
  hostmem.release_free_memory()  # As train.compile_step does.
  shape = (config.train.batch_size, *setup.example_shape)
  start = time.perf_counter()
  state = jax.block_until_ready(setup.create_state())
  init_s = time.perf_counter() - start
  noise = np.random.default_rng(0).normal(0, 0.5, shape).astype(np.float32)
  batch = jax.device_put(noise, parallel.batch_sharding(mesh))
  if config.model.get("num_classes", 0):  # Class-conditional: labels too.
    labels = np.arange(shape[0], dtype=np.int32) % config.model.num_classes
    batch = (batch, jax.device_put(labels, parallel.batch_sharding(mesh)))
  hostmem.release_free_memory()  # As train.train_and_evaluate does.
  return compiled, state, batch, init_s, compile_s


def time_train_step(
  config: ml_collections.ConfigDict, steps: int = 10, warmup: int = 2
) -> dict[str, float]:
  """Times the config's real train step on all local devices.

  The state starts `warmup` steps before the first curriculum stage change,
  so the timed steps cross it; `compiles` is the step's compile plus every
  compile seen while they run (1: the stage change is data to the step).
  Adds `step_accounting` (FLOPs, MFU, memory) and the OT share.
  """
  mesh = parallel.make_mesh()
  total = max(config.train.num_steps, 1000)
  boundary = _stage_boundary(config, total)
  fn, state, batch, init_s, compile_s = _step_inputs(config, mesh, total)
  warmup = max(warmup, 1)  # The first call is never timed.
  state = state.replace(step=state.step + max(boundary - warmup, 0))
  compiles = []

  def count(event: str, _secs: float, **_) -> None:
    compiles.append(event == _COMPILE_EVENT)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    times, n_before, metrics = _run_steps(fn, state, batch, warmup + steps)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  step_s = statistics.median(times[warmup:])
  figures = {
    "init_s": init_s,
    "compile_s": compile_s,
    "first_step_s": times[0],
    "compiles": 1.0 + sum(compiles),
    "num_scales_start": n_before,
    "num_scales_end": float(metrics["num_scales"]),
    "step_s": step_s,
    "steps_per_s": 1.0 / step_s,
    "images_per_s": config.train.batch_size / step_s,
  }
  figures.update(flops.step_accounting(config, fn, mesh.size))
  figures.update(flops.mfu(config, figures))
  ot_s = time_pairing(config, mesh, steps)
  figures.update(
    ot_s=ot_s, ot_share=ot_s / step_s, peak_rss_mib=_peak_rss_mib()
  )
  return figures


def _run_steps(fn, state, batch, calls: int):
  """(seconds of each call, N after the first, the last metrics)."""
  times, n_first = [], None
  for _ in range(calls):
    t0 = time.perf_counter()
    state, metrics = fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    n_first = float(metrics["num_scales"]) if n_first is None else n_first
  return times, n_first, metrics


def time_pairing(config, mesh, repeats: int) -> float:
  """Median seconds of the step's OT pairing alone (0 without coupling).

  The same function, scope and sharding as inside the step
  (step.paired_noise on the config's global batch).
  """
  if config.coupling.method == "none":
    return 0.0
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  x0 = jax.device_put(
    np.random.default_rng(1).normal(size=shape).astype(np.float32),
    parallel.batch_sharding(mesh),
  )
  fn = jax.jit(
    lambda key, x: step_lib.paired_noise(key, x, config.coupling, mesh)
  )
  return time_calls(fn, (jax.random.key(0), x0), max(repeats, 3))[1]


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
  """Step time of each RECIPE_VARIANTS entry (and its ratio to the paper
  recipe's), measured in one process."""
  keys = ("step_s", "images_per_s", "compiles", "mfu", "ot_share")
  rows = {}
  for name, overrides in RECIPE_VARIANTS.items():
    r = time_train_step(_with(config, overrides), steps, warmup)
    rows[name] = {k: r[k] for k in keys}
    rows[name]["time_vs_recipe"] = r["step_s"] / rows["paper recipe"]["step_s"]
  return rows


# The networks of `--mode=archs`, on the config's data and recipe: the
# paper's UNet and the authors' DiT-B/2 as configs/celeba_dit.py sets it.
ARCH_VARIANTS = {
  "UNet (paper)": {"model.arch": "unet"},
  "DiT-B/2": {
    "model.arch": "dit",
    "model.norm": "nsln",
    "model.dit.size": "B",
    "model.dit.patch": 2,
    "model.dit.mlp": "relu",
    "model.dit.rope": False,
    "model.dit.freq_filter": True,
  },
}


def compare_archs(config, steps: int, warmup: int) -> dict[str, dict]:
  """Train-step time, FLOPs and MFU of each ARCH_VARIANTS network (and its
  time relative to the UNet's), measured in one process."""
  keys = ("step_s", "images_per_s", "model_gflop_per_step", "mfu", "args_mib")
  rows = {}
  for name, overrides in ARCH_VARIANTS.items():
    c = _with(config, {**overrides, "model.num_classes": 0})
    r = time_train_step(c, steps, warmup)
    params = state_lib.abstract_state(c).params
    rows[name] = {"params_m": unet.count_params(params) / 1e6}
    rows[name].update({k: r[k] for k in keys if k in r})
    rows[name]["time_vs_unet"] = r["step_s"] / rows["UNet (paper)"]["step_s"]
  return rows


XLA_CPU_NOTE = f"# XLA:CPU options of the step: {kernels.CPU_COMPILER_OPTIONS}"


def _train_report(config, f) -> None:
  r = time_train_step(config, f.steps, f.warmup)
  print_table({"train step": r})
  print("\n# paper runs at this achieved model FLOP/s:")
  print_table(flops.project_paper_runs(r["achieved_tflop_per_s"] * 1e12))


def main(argv):
  del argv
  f = flags.FLAGS
  config = f.config
  dev = jax.devices()[0]
  print(f"# device: {dev.platform} {dev.device_kind} x{jax.device_count()}")
  if dev.platform == "cpu":
    print(XLA_CPU_NOTE)
  print(f"# host malloc: {hostmem.huge_pages_note()} (ilct_jax/hostmem.py)")
  tables = {
    "recipes": lambda: compare_recipes(config, f.steps, f.warmup),
    "archs": lambda: compare_archs(config, f.steps, f.warmup),
    "model": lambda: {
      "model": time_model(config, config.train.batch_size, f.steps, f.warmup)
    },
    "ot": lambda: (
      {f"B={f.batch}": time_ot(f.batch, f.dim)}
      if f.batch
      else time_ot_sizes(f.dim, f.step_s)
    ),
    "memory": lambda: {"step (compiled only)": flops.memory_estimate(config)},
    "eval": lambda: time_eval(config, f.steps),
    "vae": lambda: {"sd-vae": time_vae()},
    "fid": lambda: {"inception": time_fid_features()},
  }
  if f.mode == "train":
    _train_report(config, f)
  else:
    print_table(tables[f.mode]())
  assert "tensorflow" not in sys.modules, "TensorFlow leaked onto the hot path"


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program)."""
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config", default_path(), "Config.", lock_config=True
  )
  flags.DEFINE_enum("mode", "train", MODES, "What to time.")
  flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up).")
  flags.DEFINE_integer("warmup", 2, "Untimed warm-up steps.")
  flags.DEFINE_integer(
    "batch", 0, "--mode=ot: one batch size (0: the OT_SIZES table)."
  )
  flags.DEFINE_integer("dim", 4096, "Flattened size for --mode=ot.")
  # Default: the paper step's floor on one H100 (14.5 TFLOP at ~790 TFLOP/s).
  flags.DEFINE_float("step_s", 0.018, "--mode=ot: step (s) for OT's share.")


if __name__ == "__main__":
  jax.config.update("jax_threefry_partitionable", True)
  define_flags()
  resolve_sys_argv()
  app.run(main)
