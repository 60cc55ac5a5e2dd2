"""docs/SCALING.md's preflight table: paper configs x TPU slices x dtypes.

  python -m ilct_jax.lab.scaling_table --results=docs/preflight_results.jsonl \
      [--configs=celeba,...] [--topologies=v4-8,...] [--dtypes=float32,...]

For each (config, topology, dtype) it compiles the train step at the paper
batch and finds the largest batch that fits (`preflight.batch_search`: two
compiles and a line, confirmed by one more; to within 1/16 where the line
misleads), with `ilct_jax.lab.preflight`'s functions. Each finished row is
appended to the results file at once (one JSON line), and every compile's
figures to `<results>.compiles.jsonl` as soon as it is measured, so the
command resumes where it was stopped: only the compile that was running is
lost (the persistent compile cache cannot hold compile-only TPU programs).
A paper-size compile takes 4 to 18 minutes on 2 cores and 10 to 15 GB of
memory: run one at a time on a 24 GB machine.
"""

import sys

from ilct_jax.lab import targets

if __name__ == "__main__":
  targets.offline_environment()  # Before jax: see ilct_jax/lab/targets.py.

import json
import os
from pathlib import Path

import jax

from ilct_jax.lab import preflight, run_files, target_programs

CONFIGS = ("celeba", "lsun_church", "ffhq", "ilct_baseline")
TOPOLOGIES = ("v4-8", "v4-32", "v5e-8", "v5p-8", "v6e-8")
DTYPES = ("float32", "bfloat16")
# The largest batch to within 1/16: each compile of a paper step takes
# minutes, and bf16 memory is so flat that the line's first guess is far.
RESOLUTION = 1 / 16
_ROOT = Path(__file__).resolve().parents[2] / "configs"


def read(path: str) -> dict[tuple, dict]:
  rows = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        if line.strip():
          r = json.loads(line)
          rows[(r["config"], r["topology"], r["dtype"])] = r
  return rows


def compiles(path: str, key: tuple) -> dict[int, dict]:
  """{batch: figures} of the compiles already done for one row (the
  sidecar file `<results>.compiles.jsonl`), so a stopped row resumes."""
  out = {}
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        r = json.loads(line) if line.strip() else None
        if r and tuple(r["key"]) == key:
          out[int(r["batch"])] = r["figures"]
  return out


def row(
  name: str, topology: str, dtype: str, log=print, sidecar: str = ""
) -> dict:
  """One table row: the train step at the paper batch and the largest batch.

  Each compile's figures are appended to `sidecar` as measured and read back
  on a restart (only the compile that was stopped is lost).
  """
  config = run_files.load_config_file(str(_ROOT / f"{name}.py"))
  config.model.dtype = dtype
  key, done = (name, topology, dtype), {}
  if sidecar:
    done = compiles(sidecar, key)

  def keep(batch: int, figures: dict) -> None:
    done[batch] = figures
    if sidecar:
      with open(sidecar, "a") as out:
        out.write(json.dumps(dict(key=key, batch=batch, figures=figures)))
        out.write("\n")

  paper = config.train.batch_size
  if "flops" not in done.get(paper, {}):
    keep(
      paper, target_programs.measure(config, topology, 1, ("train",))["train"]
    )
  f = done[paper]
  log(
    f"  {name} {topology} {dtype}: batch {paper}: "
    f"{f['total'] / preflight.GIB:.2f} GiB ({f.get('compile_s', 0):.0f} s)"
  )
  # A batch XLA refused never fits, whatever total its message gave.
  known = {
    b: float("inf") if d.get("compiler_oom") else d["total"]
    for b, d in done.items()
  }
  best, seen = preflight.batch_search(
    config, topology, 1, known, log=log, resolution=RESOLUTION, record=keep
  )
  return _record(config, key, f, best, seen)


def _record(config, key: tuple, f: dict, best: int, seen: dict) -> dict:
  """The results-file row of one (config, topology, dtype)."""
  name, topology, dtype = key
  r = preflight.roofline(config, f, topology)
  chip = preflight.chip_of(topology)
  return {
    "config": name,
    "topology": topology,
    "dtype": dtype,
    "chips": targets.topology(topology).chips,
    "hbm_gib": chip.hbm_gib,
    "batch": config.train.batch_size,
    "fits": f["total"] <= chip.hbm_gib * preflight.GIB,
    "args_gib": f["args"] / preflight.GIB,
    "temp_gib": f["temp"] / preflight.GIB,
    "total_gib": f["total"] / preflight.GIB,
    "max_batch": best,
    "compiled_batches": {str(b): t / preflight.GIB for b, t in seen.items()},
    "tflop_per_chip": f["flops"] / 1e12,
    "gb_accessed": f["bytes_accessed"] / 1e9,
    "collective_mib": f["collective_bytes"] / 2**20,
    "bound_ms": r["bound_s"] * 1e3,
    "steps": r["steps"],
    "projected_days": r["projected_days"],
    "mfu": r["mfu"],
    "compile_s": f["compile_s"],
    "jax": jax.__version__,
  }


def markdown(rows: dict[tuple, dict]) -> str:
  head = (
    "| config | topology (chips, HBM) | dtype | fits at paper batch | "
    "GiB per chip (args + temp) | largest batch found (GiB) | "
    "TFLOP per chip per step | "
    "roofline ms per step | days (40% MFU, or the roofline if longer) | "
    "compile s (2-core host) |"
  )
  out = [head, "|" + "---|" * 10]
  for r in sorted(
    rows.values(), key=lambda r: (r["config"], r["topology"], r["dtype"])
  ):
    out.append(
      f"| {r['config']} | {r['topology']} ({r['chips']}, {r['hbm_gib']:g} "
      f"GiB) | {r['dtype']} | {'yes' if r['fits'] else 'NO'} at "
      f"{r['batch']} | {r['total_gib']:.2f} ({r['args_gib']:.2f} + "
      f"{r['temp_gib']:.2f}) | {r['max_batch']} "
      f"({r['compiled_batches'].get(str(r['max_batch']), float('nan')):.2f}) | "
      f"{r['tflop_per_chip']:.2f} | {r['bound_ms']:.1f} | "
      f"{max(r['projected_days'], r['bound_ms'] * r['steps'] / 864e5):.2f}"
      f" | {r['compile_s']:.0f} |"
    )
  return "\n".join(out)


def _main(argv: list[str]) -> None:
  from absl import flags

  from ilct_jax import parallel

  del argv
  f = flags.FLAGS
  jax.config.update("jax_threefry_partitionable", True)
  parallel.enable_compile_cache(f.compile_cache)
  rows = read(f.results)
  for name in f.configs:
    for topo in f.topologies:
      for dtype in f.dtypes:
        if (name, topo, dtype) in rows:
          continue
        print(f"# {name} {topo} {dtype}", flush=True)
        r = row(
          name,
          topo,
          dtype,
          log=lambda s: print(s, flush=True),
          sidecar=f.results.removesuffix(".jsonl") + ".compiles.jsonl",
        )
        rows[(name, topo, dtype)] = r
        with open(f.results, "a") as out:
          out.write(json.dumps(r) + "\n")
  print(markdown(rows))


if __name__ == "__main__":
  from absl import app, flags

  from ilct_jax import parallel

  flags.DEFINE_string("results", "docs/preflight_results.jsonl", "Rows file.")
  flags.DEFINE_list("configs", list(CONFIGS), "Paper configs (configs/*.py).")
  flags.DEFINE_list("topologies", list(TOPOLOGIES), "TPU slices.")
  flags.DEFINE_list("dtypes", list(DTYPES), "model.dtype values.")
  parallel.define_cluster_flags()
  app.run(_main)
  sys.exit(0)
