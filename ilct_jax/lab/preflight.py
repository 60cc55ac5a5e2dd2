"""Will this run fit on the chips, and what will it cost? Asked on any machine.

  python -m ilct_jax.preflight --config=configs/celeba.py --topology=v5e-8 \
      [--num_slices=N] [--max_batch] [--config.x=y ...]

Compiles, for the compile-only devices of the named Cloud TPU slice (libtpu
on a CPU host, `ilct_jax.lab.targets`; no TPU needed, nothing leaves the
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
(`batch_search`). `python -m ilct_jax.lab.scaling_table` makes docs/SCALING.md's
table with these functions.
"""

import sys

from ilct_jax.lab import targets

if __name__ == "__main__":
  # Before jax is imported: the host backend stays the CPU, libtpu stays off
  # the network (ilct_jax/lab/targets.py).
  _topology = [
    a.split("=", 1)[1] for a in sys.argv if a.startswith("--topology=")
  ]
  targets.offline_environment(_topology[-1] if _topology else "v4-8")

import math

import jax
import ml_collections

from ilct_jax import state as state_lib
from ilct_jax import train
from ilct_jax.lab import compiled_cost, flops
from ilct_jax.lab.target_programs import PROGRAMS, examples, measure

EXIT_DOES_NOT_FIT = 3
GIB = 2.0**30
DEFAULT_MFU = 0.4  # The stated MFU of the projected wall time (--mfu).


class DoesNotFit(SystemExit):
  """A program needs more memory per chip than the chip has (exit code 3)."""

  def __init__(self, line: str):
    super().__init__(EXIT_DOES_NOT_FIT)
    self.line = line


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
  faster than the largest of the three. The projected wall time takes the
  model FLOPs of the paper run (4 UNet forwards per example,
  `flops.train_step_flops_per_example`) at `mfu` of the slice's peak, or the
  bound where that is longer (a memory-bound step cannot reach the MFU).
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
  bound = max(t for t in (compute, memory, network) if t == t)
  step_s = max(step_flops / (chips * chip.peak_tflops * 1e12 * mfu), bound)
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
  return train.total_steps(config, examples(config))


def granule(config: ml_collections.ConfigDict, devices: int) -> int:
  """Global batches must be multiples of this: they divide over the chips
  and into whole OT groups (`coupling.group_size`, when set)."""
  group = config.coupling.group_size
  if config.coupling.method == "none" or not group:
    return devices
  return math.lcm(devices, group)


def _crossing(seen: dict, cap: float, g: int, b1: int, b2: int) -> int | None:
  """Where the line through two measured batches meets the capacity."""
  slope = (seen[b2] - seen[b1]) / (b2 - b1)
  return int(b1 + (cap - seen[b1]) / slope) // g * g if slope > 0 else None


def _next_batch(seen, ok, g, cap, resolution, phase) -> int | None:
  """batch_search's next batch to compile, or None when it is done.

  `phase` carries what the search has done: whether the line's guess was
  taken (`guessed`) and whether the line or bisection picks next
  (`by_line`, alternating once a failing batch brackets the answer).
  """
  lo = max([b for b in seen if ok[b]], default=0)
  hi = min([b for b in seen if not ok[b] and b > lo], default=None)
  if hi is None:
    if phase["guessed"]:
      return None  # The line's guess fit and nothing above it failed.
    guess = _crossing(seen, cap, g, *sorted(seen)[-2:])
    phase["guessed"] = guess is not None
    return min(guess, 1 << 20) if guess and guess > lo else 2 * lo
  if hi - lo <= max(g, resolution * lo):
    return None
  pair = (lo, hi) if lo else sorted(seen)[:2]
  guess = _crossing(seen, cap, g, *pair) if phase["by_line"] else None
  phase["by_line"] = not phase["by_line"]
  mid = max(g, (lo + hi) // 2 // g * g)
  return guess if guess is not None and lo < guess < hi else mid


def batch_search(
  config: ml_collections.ConfigDict,
  topology: str,
  num_slices: int = 1,
  known: dict[int, float] | None = None,
  log=print,
  resolution: float = 0.0,
  record=None,
) -> tuple[int, dict[int, float]]:
  """Largest global train batch whose step fits in HBM, and what was compiled.

  Per-chip memory is nearly affine in the batch (the state, plus activations
  per example), so two compiles (the batch and half of it) give a line, the
  line's crossing of the capacity is compiled next, and when it fits (nothing
  measured above it failed) it is the answer. Otherwise the search
  alternates the line through the bracketing points with bisection until
  the bracket is one granule wide (or `resolution` of the answer: each
  paper-size compile takes minutes). Batches stay multiples of `granule`.

  Args:
    known: {global batch: total bytes per chip} already measured (reused).
    log: where each compile's line goes.
    resolution: stop once the smallest failing batch is within this
      fraction above the largest fitting one (0: exact to a granule).
    record: called as record(batch, figures) after each compile (to keep
      them: scaling_table resumes from them).

  Returns:
    (largest fitting batch or 0, {batch: total bytes per chip}).
  """
  g = granule(config, targets.topology(topology).chips * num_slices)
  cap = chip_of(topology).hbm_gib * GIB
  seen = dict(known or {})
  ok = {b: t <= cap for b, t in seen.items()}

  def compile_at(batch: int) -> None:
    c = ml_collections.ConfigDict(config.to_dict())
    c.train.batch_size = batch
    f = measure(c, topology, num_slices, ("train",))["train"]
    seen[batch], ok[batch] = f["total"], fits(f, topology)
    if record is not None:
      record(batch, f)
    log(
      f"  batch {batch}: {f['total'] / GIB:.2f} GiB per chip "
      f"({f['compile_s']:.0f} s compile)"
    )

  base = max(g, config.train.batch_size // g * g)
  for b in (base, max(g, base // 2 // g * g) if base > g else 2 * g):
    if b not in seen:
      compile_at(b)
  phase = {"by_line": True, "guessed": False}
  for _ in range(24):
    nxt = _next_batch(seen, ok, g, cap, resolution, phase)
    if nxt is None or nxt in seen:
      break
    compile_at(nxt)
  return max([b for b in seen if ok[b]], default=0), seen


# The forms compared by --compare_kernels: the target's "auto" row, then each
# kernel switched to its other form alone.
def kernel_variants(platform: str) -> list[tuple[str, dict[str, str]]]:
  """The forms --compare_kernels compiles: the platform's "auto" row, then
  each kernel switched alone to its other form."""
  from ilct_jax import kernels

  out = [("auto", {})]
  for name, forms in (
    ("conv", kernels.CONV),
    ("norm", kernels.NORM),
    ("attention", kernels.ATTENTION),
  ):
    for form in forms:
      if form != kernels.AUTO[platform][name]:
        out.append((f"{name}={form}", {name: form}))
  return out


def compare_kernels(config, topology: str, log=print) -> dict[str, dict]:
  """The train step's compiled cost with each kernel in each of its forms.

  Returns {variant: figures}; each line is logged as it is measured
  (FLOPs, bytes accessed, temporaries per chip), for docs/DESIGN.md.
  """
  from ilct_jax import kernels

  platform = targets.topology(topology).platform
  out = {}
  for name, change in kernel_variants(platform):
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

  from ilct_jax import config_checks, kernels, parallel

  del argv
  f = flags.FLAGS
  config = f.config
  jax.config.update("jax_threefry_partitionable", True)  # As main.py does.
  parallel.enable_compile_cache(f.compile_cache)
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
    known = {}
    if "train" in figures and not figures["train"].get("compiler_oom"):
      known[config.train.batch_size] = figures["train"]["total"]
    best, _ = batch_search(config, f.topology, f.num_slices, known)
    print(f"# largest global batch that fits on {f.topology}: {best}")
  line = verdict(figures, f.topology)
  if line:
    print(line, file=sys.stderr)
    raise DoesNotFit(line)


def define_flags() -> None:
  from absl import flags
  from ml_collections import config_flags

  from ilct_jax import config_files
  from ilct_jax import parallel as parallel_lib

  config_flags.DEFINE_config_file(
    "config", config_files.default_path(), "Config file.", lock_config=True
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
