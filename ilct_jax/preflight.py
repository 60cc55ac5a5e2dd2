"""Will this run fit on the chips, and what will it cost? Asked on any machine.

  python -m ilct_jax.preflight --config=configs/celeba.py --topology=v5e-8 \
      [--num_slices=N] [--max_batch] [--config.x=y ...]

Compiles, for the compile-only devices of the named Cloud TPU slice (libtpu
on a CPU host, `ilct_jax.targets`; no TPU needed, nothing leaves the
machine), the programs the run would compile, at the global batch and
sharding it would use over every host's devices: the train step, the 1- and
2-step samplers (sampling, VAE decode, uint8), the latent encoder step and the
FID feature step. Kernels are chosen for the target (`ilct_jax.kernels`).
Prints one table (per chip: arguments, outputs and how much of them alias
donated arguments, temporaries, total against HBM; FLOPs, bytes accessed,
collectives; compile seconds), then a roofline lower bound of the train step
and the paper run's projected wall time at `--mfu`. A program that does not
fit ends the command with exit code 3 and one line naming it, its need and
the capacity. `--max_batch` finds the largest global train batch that fits
(`batch_search`). `python -m ilct_jax.scaling_table` makes docs/SCALING.md's
table with these functions.
"""

import sys

from ilct_jax import targets

if __name__ == "__main__":
  # Before jax is imported: the host backend stays the CPU, libtpu stays off
  # the network (ilct_jax/targets.py).
  _topology = [
    a.split("=", 1)[1] for a in sys.argv if a.startswith("--topology=")
  ]
  targets.offline_environment(_topology[-1] if _topology else "v4-8")

import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ilct_jax import compiled_cost, flops, parallel, sampling, train
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.evaluation import samples
from ilct_jax.models import autoencoder, inception
from ilct_jax.models import vae as vae_lib

EXIT_DOES_NOT_FIT = 3
GIB = 2.0**30
PROGRAMS = ("train", "sample_1step", "sample_2step", "encode", "fid_features")
DEFAULT_MFU = 0.4  # The stated MFU of the projected wall time (--mfu).


class DoesNotFit(SystemExit):
  """A program needs more memory per chip than the chip has (exit code 3)."""

  def __init__(self, line: str):
    super().__init__(EXIT_DOES_NOT_FIT)
    self.line = line


def _abstract(tree: Any, sharding: Any) -> Any:
  return jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree
  )


def _timed_compile(lowered: Any) -> tuple[Any, float]:
  t0 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, time.perf_counter() - t0


# Training-set sizes of the paper runs (ALGORITHM.md §13, flops.PAPER_RUNS):
# CelebA-HQ's 27k train split, LSUN Church doubled by flips, FFHQ 70k.
_PAPER_EXAMPLES = {
  "celeb_a_hq": 27_000,
  "lsun_church": 2 * 126_227,
  "ffhq": 70_000,
}


def _examples(config: ml_collections.ConfigDict) -> int:
  """Training-set size: data.num_examples, else the paper run's size."""
  if config.data.num_examples > 0:
    return int(config.data.num_examples)
  where = f"{config.data.get('name', '')} {config.data.get('latent_dir', '')}"
  for key, n in _PAPER_EXAMPLES.items():
    if key in where:
      return n
  return 1797 if config.data.source == "digits" else 27_000  # UCI digits.


def compile_train(config, mesh) -> tuple[Any, float]:
  """The train step as `train.compile_step` compiles it, nothing allocated."""
  state = state_lib.abstract_sharded_state(config, mesh)
  steps = train.total_steps(config, _examples(config))
  compiled, seconds = step_lib.compile_ahead(config, mesh, state, max(steps, 1))
  return compiled, seconds


def _latent(config: ml_collections.ConfigDict) -> bool:
  return config.data.source != "digits"


def _decoder(config):
  """(decode(aux, x0), abstract aux): the SD VAE for latents, else identity."""
  if not _latent(config):
    return (lambda aux, x: x), ()
  vae = vae_lib.AutoencoderKL()
  decode = lambda aux, x: autoencoder.decode_pure(vae, aux, x)
  return decode, vae_lib.abstract_params(vae)


def compile_sampler(config, mesh, name: str) -> tuple[Any, float]:
  """`samples.sample_program` (no Inception) for the 'onestep'/'twostep'."""
  sigmas = sampling.samplers(config)[name]
  decode, aux = _decoder(config)
  program = samples.sample_program(config, sigmas, mesh, decode)
  repl = parallel.replicated(mesh)
  params = _abstract(state_lib.abstract_state(config).params, repl)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=repl)
  return _timed_compile(program.lower(params, _abstract(aux, repl), key))


def _image_side(config: ml_collections.ConfigDict) -> int:
  side = config.data.image_size
  return (
    side * vae_lib.AutoencoderKL().downsample_factor
    if _latent(config)
    else side
  )


def compile_encode(config, mesh) -> tuple[Any, float] | None:
  """The encode job's step: VAE encode + posterior sample (latent configs)."""
  if not _latent(config):
    return None
  vae = vae_lib.AutoencoderKL()
  hosts = len({d.process_index for d in mesh.devices.flat})
  devices = mesh.size
  batch = -(-max(int(config.data.encode_batch), 1) * hosts // devices) * devices
  rows, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  side = _image_side(config)

  def encode(params, images, keys):
    mean, logvar = autoencoder.encode_pure(vae, params, images)
    return jax.vmap(autoencoder.sample_latents)(keys, mean, logvar)

  fn = jax.jit(encode, out_shardings=rows)
  images = jax.ShapeDtypeStruct(
    (batch, side, side, 3), jnp.float32, sharding=rows
  )
  keys = jax.ShapeDtypeStruct((batch,), jax.random.key(0).dtype, sharding=rows)
  params = _abstract(vae_lib.abstract_params(vae), repl)
  return _timed_compile(fn.lower(params, images, keys))


def compile_features(config, mesh) -> tuple[Any, float]:
  """InceptionV3 pool3 of eval.batch_size uint8 images (the FID features)."""
  from ilct_jax.evaluation import features  # Module-level import is heavy.

  module = inception.InceptionV3()
  size = config.eval.inception_size
  probe = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), probe)
  rows, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  side = _image_side(config)
  shape = (config.eval.batch_size, side, side, 3)
  images = jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=rows)
  fn = jax.jit(
    lambda v, u8: features.pool3(module, v, u8, size), out_shardings=rows
  )
  return _timed_compile(fn.lower(_abstract(variables, repl), images))


def _check_batches(config, devices: int, programs) -> None:
  checks = {"train": ("train.batch_size", config.train.batch_size)}
  for p in ("sample_1step", "sample_2step", "fid_features"):
    checks[p] = ("eval.batch_size", config.eval.batch_size)
  for p in programs:
    if p in checks and checks[p][1] % devices:
      field, value = checks[p]
      raise ValueError(
        f"{field}={value} does not divide over the {devices} chips of this "
        f"topology; set --config.{field} to a multiple of {devices}"
      )


def measure(
  config: ml_collections.ConfigDict,
  topology: str,
  num_slices: int = 1,
  programs=PROGRAMS,
) -> dict[str, dict[str, float]]:
  """{program: compiled_cost.of(...) + compile_s} on the named topology."""
  devices = targets.devices(topology, num_slices)
  mesh = parallel.make_mesh(devices)
  _check_batches(config, mesh.size, programs)
  makers = {
    "train": lambda: compile_train(config, mesh),
    "sample_1step": lambda: compile_sampler(config, mesh, "onestep"),
    "sample_2step": lambda: compile_sampler(config, mesh, "twostep"),
    "encode": lambda: compile_encode(config, mesh),
    "fid_features": lambda: compile_features(config, mesh),
  }
  out = {}
  for name in programs:
    t0 = time.perf_counter()
    try:
      made = makers[name]()
    except jax.errors.JaxRuntimeError as e:
      oom = _compiler_oom(str(e))
      if oom is None:
        raise
      out[name] = {**oom, "compile_s": time.perf_counter() - t0}
      continue
    if made is None:
      continue
    compiled, seconds = made
    out[name] = {**compiled_cost.of(compiled), "compile_s": seconds}
  return out


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_OOM = re.compile(
  r"RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm|"
  r"RESOURCE_EXHAUSTED: Ran out of memory on HBM"
)
_NEED = re.compile(
  r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"
)


def _compiler_oom(message: str) -> dict[str, float] | None:
  """The TPU compiler's own refusal ("Ran out of memory on HBM"), as figures.

  Far past the chip's memory, XLA:TPU stops before any buffer assignment;
  its message names the bytes required and the usable HBM (e.g. 1.51T of
  15.75G), which the verdict then reports.
  """
  if not _OOM.search(message):
    return None
  m = _NEED.search(message)
  nan = float("nan")
  need = float(m.group(1)) * _UNITS[m.group(2)] if m else float("inf")
  usable = float(m.group(3)) * _UNITS[m.group(4)] if m else nan
  keys = ("args", "outputs", "aliased", "temp", "flops", "bytes_accessed")
  return {
    **{k: nan for k in keys},
    "total": need,
    "usable": usable,
    "compiler_oom": 1.0,
    "collective_count": nan,
    "collective_bytes": nan,
  }


def chip_of(topology: str) -> targets.Chip:
  return targets.CHIPS[targets.topology(topology).chip]


def verdict(figures: dict, topology: str) -> str | None:
  """The one line for the first program that does not fit, or None."""
  chip = chip_of(topology)
  for name, f in figures.items():
    if not fits(f, topology):
      usable = f.get("usable", float("nan"))
      said = (
        f" ({usable / GIB:.2f} GiB usable, says its compiler)"
        if usable == usable
        else ""
      )
      return (
        f"preflight: {name} does not fit on {topology}: it needs "
        f"{f['total'] / GIB:.2f} GiB per chip, a {chip.name} has "
        f"{chip.hbm_gib:g} GiB HBM{said}; lower the batch (--max_batch finds "
        "the largest), or try --config.model.dtype=bfloat16 / "
        "--config.model.remat=True"
      )
  return None


def fits(f: dict[str, float], topology: str) -> bool:
  """Whether a program's figures fit one chip's HBM."""
  return f["total"] <= chip_of(topology).hbm_gib * GIB and not f.get(
    "compiler_oom"
  )


def roofline(
  config: ml_collections.ConfigDict,
  train: dict[str, float],
  topology: str,
  num_slices: int = 1,
  mfu: float = DEFAULT_MFU,
) -> dict[str, float]:
  """Lower bounds of the train step's time and the paper run's wall time.

  Per chip: compute = XLA FLOPs / peak; memory = bytes accessed / HBM
  bandwidth; collectives = collective result bytes / ICI bandwidth (a loose
  bound: a ring all-reduce moves about twice its bytes). The step can be no
  faster than the largest of the three. The projected wall time instead
  takes the model FLOPs of the paper run (4 UNet forwards per example,
  `flops.train_step_flops_per_example`) at `mfu` of the slice's peak.
  """
  chip = chip_of(topology)
  topo = targets.topology(topology)
  chips = topo.chips * num_slices
  model = state_lib.create_model(config, topo.platform)
  per_example = flops.train_step_flops_per_example(
    model, state_lib.example_shape(config)
  )
  step_flops = per_example * config.train.batch_size
  # XLA:GPU reports no FLOPs or bytes for a deviceless program: the model
  # FLOPs per chip stand in for the first, and the second is unknown (NaN).
  chip_flops = train["flops"]
  if not chip_flops == chip_flops:
    chip_flops = step_flops / chips
  compute = chip_flops / (chip.peak_tflops * 1e12)
  memory = train["bytes_accessed"] / (chip.hbm_gbps * 1e9)
  network = train["collective_bytes"] / (chip.ici_gbps * 1e9)
  steps = run_steps(config)
  step_s = step_flops / (chips * chip.peak_tflops * 1e12 * mfu)
  bound = max(t for t in (compute, memory, network) if t == t)
  return {
    "compute_s": compute,
    "memory_s": memory,
    "collective_s": network,
    "bound_s": bound,
    "model_tflop_per_step": step_flops / 1e12,
    "steps": float(steps),
    "mfu": mfu,
    "projected_step_s": step_s,
    "projected_days": steps * step_s / 86400.0,
    "bound_days": steps * bound / 86400.0,
  }


def run_steps(config: ml_collections.ConfigDict) -> int:
  """K of the run: train.num_steps, or epochs over the training set."""
  return train.total_steps(config, _examples(config))


def granule(config: ml_collections.ConfigDict, devices: int) -> int:
  """Global batches must be multiples of this: the chips (OT per shard or
  over the whole batch both need a batch that divides over them)."""
  del config
  return devices


def batch_search(
  config: ml_collections.ConfigDict,
  topology: str,
  num_slices: int = 1,
  known: dict[int, float] | None = None,
  log=print,
) -> tuple[int, dict[int, float]]:
  """Largest global train batch whose step fits in HBM, and what was compiled.

  Per-chip memory is affine in the batch (the state plus activations per
  example), so two compiles (the batch and half of it) give the line, the
  line gives the candidate, and one more compile confirms that it fits;
  where the line misleads (the candidate does not fit), bisection between
  the largest batch that fit and the smallest that did not takes over.
  Batches stay multiples of `granule`.

  Args:
    known: {global batch: total bytes per chip} already measured (reused).
    log: where each compile's line goes.

  Returns:
    (largest fitting batch or 0, {batch: total bytes per chip}).
  """
  chips = targets.topology(topology).chips * num_slices
  g = granule(config, chips)
  capacity = chip_of(topology).hbm_gib * GIB
  seen = dict(known or {})

  def total(batch: int) -> float:
    if batch not in seen:
      c = ml_collections.ConfigDict(config.to_dict())
      c.train.batch_size = batch
      f = measure(c, topology, num_slices, ("train",))["train"]
      seen[batch] = f["total"]
      log(
        f"  batch {batch}: {f['total'] / GIB:.2f} GiB per chip "
        f"({f['compile_s']:.0f} s compile)"
      )
    return seen[batch]

  base = max(g, config.train.batch_size // g * g)
  total(base)
  # The second point below the first: smaller batches compile faster.
  other = max(g, base // 2 // g * g)
  if other == base:
    other = base * 2
  total(other)
  fits = [b for b, t in seen.items() if t <= capacity]
  fails = [b for b, t in seen.items() if t > capacity]
  if len(seen) >= 2:  # The line through the two smallest points measured.
    (b1, t1), (b2, t2) = sorted(seen.items())[:2]
    slope = (t2 - t1) / (b2 - b1)
    if slope > 0:
      guess = int((capacity - (t1 - slope * b1)) / slope) // g * g
      guess = min(guess, 1 << 20)
      if guess >= g and guess not in seen:
        total(guess)
  for _ in range(12):  # Bisection between what fit and what did not.
    fits = [b for b, t in seen.items() if t <= capacity]
    fails = [b for b, t in seen.items() if t > capacity]
    lo = max(fits, default=0)
    hi = min([b for b in fails if b > lo], default=None)
    if hi is None:
      break  # The line's guess fit: it is the answer (one compile more).
    if hi - lo <= g:
      break
    total((lo + hi) // 2 // g * g)
  fits = [b for b, t in seen.items() if t <= capacity]
  return max(fits, default=0), seen


# The forms compared by --compare_kernels: the target's "auto" row, then each
# kernel switched to its other form alone.
KERNEL_VARIANTS = (
  ("auto", {}),
  ("conv=cpu", {"conv": "cpu"}),
  ("norm=xla", {"norm": "xla"}),
  ("attention=xla", {"attention": "xla"}),
)


def compare_kernels(config, topology: str, log=print) -> dict[str, dict]:
  """The train step's compiled cost with each kernel in each of its forms.

  Returns {variant: figures}; each line is logged as it is measured
  (FLOPs, bytes accessed, temporaries per chip), for docs/DESIGN.md.
  """
  from ilct_jax import kernels

  platform = targets.topology(topology).platform
  out = {}
  for name, change in KERNEL_VARIANTS:
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.kernels.update(change)
    f = measure(c, topology, 1, ("train",))["train"]
    out[name] = f
    log(
      f"| {name} ({kernels.select(c.model, platform).describe()}) | "
      f"{f['flops'] / 1e12:.3f} | {f['bytes_accessed'] / 1e9:.2f} | "
      f"{f['temp'] / GIB:.2f} | {f['compile_s']:.0f} |"
    )
  return out


def _gib(x: float) -> str:
  return f"{x / GIB:.2f}"


def table(figures: dict, topology: str, num_slices: int = 1) -> str:
  """The per-program markdown table."""
  chip = chip_of(topology)
  head = (
    "| program | args GiB | outputs GiB (aliased) | temp GiB | total GiB "
    f"(of {chip.hbm_gib:g}) | fits | GFLOP | GB accessed | collectives "
    "(MiB) | compile s |"
  )
  rows = [head, "|" + "---|" * 10]
  for name, f in figures.items():
    coll = ", ".join(
      f"{int(f[k + '_count'])} {k}"
      for k in compiled_cost.COLLECTIVES
      if f.get(k + "_count")
    )
    rows.append(
      f"| {name} | {_gib(f['args'])} | {_gib(f['outputs'])} "
      f"({_gib(f['aliased'])}) | {_gib(f['temp'])} | {_gib(f['total'])} | "
      f"{'yes' if fits(f, topology) else 'NO'} | "
      f"{f['flops'] / 1e9:.1f} | {f['bytes_accessed'] / 1e9:.2f} | "
      f"{coll or '-'} ({f['collective_bytes'] / 2**20:.1f}) | "
      f"{f['compile_s']:.1f} |"
    )
  return "\n".join(rows)


def _main(argv: list[str]) -> None:
  from absl import flags

  from ilct_jax import cli, config_checks, kernels

  del argv
  f = flags.FLAGS
  config = f.config
  jax.config.update("jax_threefry_partitionable", True)  # As main.py does.
  cli.enable_compile_cache(f.compile_cache)
  config_checks.check_names(config)
  topo = targets.topology(f.topology)
  chips = topo.chips * f.num_slices
  chip = chip_of(f.topology)
  picked = kernels.select(config.model, topo.platform)
  print(
    f"# {f.topology} x{f.num_slices}: {chips} chips of {chip.name} "
    f"({chip.hbm_gib:g} GiB HBM, {chip.peak_tflops:g} TFLOP/s bf16), "
    f"{topo.hosts * f.num_slices} hosts; global batch "
    f"{config.train.batch_size} ({config.train.batch_size / chips:g} per "
    f"chip); model.dtype={config.model.dtype}; kernels {picked.describe()}"
  )
  if f.compare_kernels:
    print(
      "| kernels | TFLOP per chip | GB accessed | temp GiB | compile s |\n"
      "|---|---|---|---|---|"
    )
    compare_kernels(config, f.topology, log=lambda s: print(s, flush=True))
    return
  figures = measure(config, f.topology, f.num_slices, f.programs)
  print(table(figures, f.topology, f.num_slices))
  if "train" in figures:
    r = roofline(config, figures["train"], f.topology, f.num_slices, f.mfu)
    print(
      f"\n# train step roofline per chip: compute {r['compute_s'] * 1e3:.1f} "
      f"ms, HBM {r['memory_s'] * 1e3:.1f} ms, collectives "
      f"{r['collective_s'] * 1e3:.2f} ms -> at least "
      f"{r['bound_s'] * 1e3:.1f} ms per step ({r['bound_days']:.2f} days for "
      f"{int(r['steps'])} steps)"
    )
    print(
      f"# paper run: {int(r['steps'])} steps x "
      f"{r['model_tflop_per_step']:.2f} model TFLOP at {r['mfu']:.0%} MFU "
      f"= {r['projected_step_s'] * 1e3:.1f} ms per step, "
      f"{r['projected_days']:.2f} days"
    )
  if f.max_batch:
    print("\n# --max_batch: largest global train batch that fits")
    best, _ = batch_search(config, f.topology, f.num_slices)
    print(f"# largest global batch that fits on {f.topology}: {best}")
  line = verdict(figures, f.topology)
  if line:
    print(line, file=sys.stderr)
    raise DoesNotFit(line)


def define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags

  from ilct_jax import parallel as parallel_lib

  config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Config file.", lock_config=True
  )
  flags.DEFINE_string(
    "topology", "v4-8", f"Cloud TPU slice: {', '.join(targets.TOPOLOGIES)}."
  )
  flags.DEFINE_integer("num_slices", 1, "Slices (multislice over DCN).")
  flags.DEFINE_multi_enum(
    "programs", list(PROGRAMS), PROGRAMS, "Programs to compile."
  )
  flags.DEFINE_bool(
    "max_batch", False, "Also find the largest global batch that fits."
  )
  flags.DEFINE_float("mfu", DEFAULT_MFU, "MFU of the projected wall time.")
  flags.DEFINE_bool(
    "compare_kernels",
    False,
    "Only the train step, once per kernel form (docs/DESIGN.md).",
  )
  parallel_lib.define_cluster_flags()  # --compile_cache (others unused).


if __name__ == "__main__":
  from ilct_jax import cli as _cli

  define_flags()
  _cli.run(_main)
