"""Speed and memory figures: `python -m ilct_jax.benchmark --config=...`.

Every timing loop of the project lives here (the FLOP and memory accounting
they report is flops.py). Modes (`--mode`):
  train    the config's jitted train step: init and compile seconds, compiles
           across a stage change, steps/s, images/s, model FLOPs beside
           XLA's, MFU, OT share, memory, projected days of each paper run.
  recipes  train-step time of the paper recipe vs the iLCT baseline (and each
           technique switched off alone), as ratios measured in one run.
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

from ilct_jax import consistency, coupling, kernels, parallel, sampling
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.config_files import default_path, resolve_sys_argv
from ilct_jax.evaluation import features, fid_samples
from ilct_jax.lab import flops
from ilct_jax.models import autoencoder, inception, unet
from ilct_jax.models import vae as vae_lib

MODES = ("train", "recipes", "model", "ot", "memory", "eval", "vae", "fid")
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax's name.
PyTree = Any


def time_calls(fn: Callable[..., Any], args: tuple, repeats: int):
  """(first call seconds, median seconds of `repeats` more calls).

  Each call is waited for (`block_until_ready`); the first one includes the
  compile unless this process already compiled the same program.
  """
  times = _call_times(fn, args, repeats + 1)
  return times[0], statistics.median(times[1:])


def _call_times(fn: Callable[..., Any], args: tuple, calls: int) -> list:
  """Seconds of each of `calls` waited-for calls of fn(*args)."""
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


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
  abstract = state_lib.abstract_sharded_state(config, mesh)
  compiled, compile_s = step_lib.compile_ahead(config, mesh, abstract, total)
  hostmem.release_free_memory()  # As train.compile_step does.
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  start = time.perf_counter()
  state = jax.block_until_ready(state_lib.create_train_state(config, mesh))
  init_s = time.perf_counter() - start
  noise = np.random.default_rng(0).normal(0, 0.5, shape).astype(np.float32)
  batch = jax.device_put(noise, parallel.batch_sharding(mesh))
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


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


def _random_params(model: Any, x: jax.Array, labels: jax.Array) -> PyTree:
  """0.02 * N(0, 1) for every parameter (no zero-init branch stays zero)."""
  kp = jax.random.key(1)
  abstract = jax.eval_shape(
    lambda k: model.init(k, x, labels, train=False)["params"], kp
  )
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(kp, len(leaves))

  def make(ks):
    values = [
      0.02 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(ks, leaves)
    ]
    return jax.tree.unflatten(treedef, values)

  return jax.jit(make)(keys)


def time_model(
  config: ml_collections.ConfigDict, batch: int, steps: int, warmup: int
) -> dict[str, float]:
  """Times the config's UNet alone on the default device.

  Two jitted programs on random float32 inputs [batch, *example_shape] and
  c_noise values: the forward (train=False) and the gradient of
  mean(F(x)^2) (train=True), i.e. one forward + one backward as in a plain
  PyTorch `loss.backward()` timing. Returns median and min seconds, compile
  seconds, the analytic and XLA GFLOP of each, params and peak RSS (MiB).
  """
  model = state_lib.create_model(config)
  shape = (batch, *state_lib.example_shape(config))
  x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  labels = 250.0 * jnp.log(jnp.linspace(0.01, 10.0, batch, dtype=jnp.float32))
  params = _random_params(model, x, labels)

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
    jitted = jax.jit(fn, compiler_options=model.kernels.compiler_options())
    compiled = jitted.lower(params, x, labels).compile()
    figures[f"{name}_compile_s"] = time.perf_counter() - start
    figures[f"{name}_gflop"] = flops.matmul_flops(fn, params, x, labels) / 1e9
    figures[f"{name}_xla_gflop"] = (
      flops.xla_cost(compiled).get("flops", 0.0) / 1e9
    )
    warm = max(warmup, 1)
    times = _call_times(compiled, (params, x, labels), warm + steps)[warm:]
    figures[f"{name}_s"] = statistics.median(times)
    figures[f"{name}_min_s"] = min(times)
  figures["bwd_s"] = figures["fwd_bwd_s"] - figures["fwd_s"]
  figures["peak_rss_mib"] = _peak_rss_mib()
  return figures


_OT_SOLVERS = {
  "exact": lambda x, z: coupling.assignment(x, z, method="exact"),
  "exact_crouse": coupling.crouse_assignment,
  "sinkhorn": lambda x, z: coupling.assignment(x, z, method="sinkhorn"),
}
CROUSE_MAX = 512  # The dense JAX solver's cost grows fast: 1.3 s at 512.


def time_ot(batch: int = 128, dim: int = 4096, repeats: int = 10) -> dict:
  """`<solver>_s`: median seconds of one jitted call on B x D Gaussians.

  D = 4096 is a 32x32x4 CelebA-HQ latent; `repeats` timed calls follow one
  compile call; exact_crouse only up to CROUSE_MAX.
  """
  key_x, key_z = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (batch, dim), jnp.float32)
  z = jax.random.normal(key_z, (batch, dim), jnp.float32)
  figures = {"batch": batch, "dim": dim}
  for name, fn in _OT_SOLVERS.items():
    if name == "exact_crouse" and batch > CROUSE_MAX:
      continue
    figures[f"{name}_s"] = time_calls(jax.jit(fn), (x, z), repeats)[1]
  return figures


OT_SIZES = (128, 512, 1536, 4096)  # 1536: the LSUN global batch.


def time_ot_sizes(dim: int, step_s: float | None) -> dict[str, dict]:
  """time_ot at each of OT_SIZES (fewer repeats as it grows).

  With `step_s` (an accelerator step time, seconds), each row adds the
  exact pairing's share of such a step.
  """
  rows = {}
  for size in OT_SIZES:
    row = time_ot(size, dim, repeats=10 if size <= 512 else 3)
    if step_s:
      row["exact_share_of_step"] = row["exact_s"] / step_s
    rows[f"B={size}"] = row
  return rows


def time_eval(config: ml_collections.ConfigDict, repeats: int) -> dict:
  """Throughput of the fused FID program (fid_samples.sample_program).

  One jitted, sharded program per batch: sampler -> SD-VAE decode (latent
  configs; random weights) -> uint8 -> InceptionV3 pool3 (random weights),
  nothing on the host until the features. For each sampler of
  eval.samplers: compile seconds, images/s and the projected wall time of
  a 50k-sample FID. (eval.protocol=paper adds host JPEG work per image.)
  """
  mesh = parallel.make_mesh()
  if config.data.source == "digits":
    decode, aux = (lambda a, x: x), ()
  else:
    vae = vae_lib.AutoencoderKL()
    decode = lambda a, x: autoencoder.decode_pure(vae, a, x)
    aux = vae_lib.random_params(vae)
  module = inception.InceptionV3()
  variables = inception.init_variables(module)
  model = state_lib.create_model(config, mesh)
  shape = (config.eval.batch_size, *state_lib.example_shape(config))
  x = jnp.zeros(shape, jnp.float32)
  params = _random_params(model, x, jnp.zeros((shape[0],)))
  rows = {}
  for name in config.eval.samplers:
    sigmas = sampling.samplers(config)[name]
    program = fid_samples.sample_program(config, sigmas, mesh, decode, module)
    args = (params, aux, jax.random.key(0), variables)
    first, per_batch = time_calls(program, args, repeats)
    rate = config.eval.batch_size / per_batch
    rows[name] = {
      "batch": float(config.eval.batch_size),
      "nfe": float(sum(v > config.ct.sigma_min for v in sigmas)),
      "compile_s": first - per_batch,
      "images_per_s": rate,
      "fid50k_hours": 50_000 / rate / 3600.0,
    }
  return rows


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


def print_table(rows: dict[str, dict], keys: list[str] | None = None) -> None:
  """A markdown table: one column per row of `rows` (figures down)."""
  keys = keys or list(dict.fromkeys(k for r in rows.values() for k in r))
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  print(
    "| figure | " + " | ".join(rows) + " |\n" + "|---" * (len(rows) + 1) + "|"
  )
  for k in keys:
    print(
      f"| {k} | " + " | ".join(fmt(r.get(k, "-")) for r in rows.values()) + " |"
    )


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
