"""A run at a glance, from its workdir alone (`ilct_jax.lab.inspect_run`).

Owns the run summary of the command line and the notebook: checkpoints on
disk (and damaged ones), the config's differences from a base config, the
parameter count per top-level module, the EMA decays, the non-finite step
count, the curriculum stage N and robust-loss scale c of the last update, the
last logged metrics and a PNG of 1-step and 2-step samples (the event files
and config files are read through analysis.py).

  python -m ilct_jax.lab.inspect_run WORKDIR [--base=configs/default.py] \
      [--out=PNG] [--ema=D] [--num=16]

The state is restored on ONE device (abstract target, nothing initialised),
so the summary works on any host that can read the workdir (local or gs://).
"""

import os
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

import ilct_jax
from ilct_jax import checkpointing, cli, consistency, parallel, runs, storage
from ilct_jax import state as state_lib
from ilct_jax.evaluation import image_files, write_samples
from ilct_jax.lab import analysis, run_files

ABSENT = "<absent>"  # A field one of the two configs does not have.


def default_base() -> str:
  """The repository's configs/default.py (beside the ilct_jax package)."""
  return str(Path(ilct_jax.__file__).parents[1] / "configs" / "default.py")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(node, dict):
    return {prefix[:-1]: tuple(node) if isinstance(node, list) else node}
  out = {}
  for k, v in node.items():
    out.update(_flatten(v, f"{prefix}{k}."))
  return out


def config_diff(
  run: ml_collections.ConfigDict, base: ml_collections.ConfigDict
) -> list[tuple[str, Any, Any]]:
  """(dotted field, run value, base value) for every differing leaf."""
  a, b = _flatten(run.to_dict()), _flatten(base.to_dict())
  return [
    (k, a.get(k, ABSENT), b.get(k, ABSENT))
    for k in sorted(set(a) | set(b))
    if a.get(k, ABSENT) != b.get(k, ABSENT)
  ]


def _step_dirs(workdir: str, sub: str) -> list[str]:
  root = storage.join(workdir, sub)
  return storage.listdir(root) if storage.isdir(root) else []


def checkpoints_on_disk(workdir: str) -> tuple[list[int], list[str]]:
  """(checkpoint steps, entries of damaged_checkpoints/) of a workdir."""
  names = _step_dirs(workdir, checkpointing.CHECKPOINTS)
  steps = sorted(int(n) for n in names if n.isdigit())
  return steps, _step_dirs(workdir, checkpointing.DAMAGED)


def param_counts(params: Any) -> dict[str, int]:
  """Number of scalars per top-level module of a parameter tree."""
  return {
    name: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sub))
    for name, sub in params.items()
  }


def curriculum(
  config: ml_collections.ConfigDict, step: int, total_steps: int
) -> tuple[int, float]:
  """(N, c) of the update that produced `step` (train step index step - 1).

  That update is the one the event files log at `step`.
  """
  ct = config.ct
  k = max(step - 1, 0)
  n = consistency.num_scales(k, total_steps, ct.start_scales, ct.end_scales)
  dim = int(np.prod(state_lib.example_shape(config)))
  return int(n), float(consistency.robust_c(n, ct, dim))


def sample_batches(
  config: ml_collections.ConfigDict,
  params: Any,
  num: int,
  mesh: jax.sharding.Mesh | None = None,
) -> dict[str, np.ndarray]:
  """{sampler: uint8 [num, H, W, C]}; {} when latents cannot be decoded.

  Same keys as write_samples.sample_images (the training grids), but on `mesh`
  (default: the first device), where params restored on one device live.
  """
  mesh = parallel.make_mesh(jax.devices()[:1]) if mesh is None else mesh
  samples = write_samples.sample_images(config, params, num, mesh)
  return {k: v for k, (_, v) in samples.items() if v is not None}


def write_grids(path: str, batches: dict[str, np.ndarray]) -> None:
  """The grids of `batches` side by side (black gap) in one PNG."""
  grids = [image_files.make_grid(b) for b in batches.values()]
  gap = np.zeros((grids[0].shape[0], 2, grids[0].shape[2]), np.uint8)
  parts = [p for g in grids for p in (gap, g)][1:]
  up = max(1, 128 // next(iter(batches.values())).shape[1])
  image_files.save_png(path, np.concatenate(parts, axis=1), up)


def _last_metrics(workdir: str) -> tuple[int | None, dict[str, float]]:
  """(last logged step, {tag: value} at that step) of the event files."""
  scalars = run_files.read_scalars(workdir)
  last = max((v[-1][0] for v in scalars.values()), default=None)
  return last, {k: v[-1][1] for k, v in scalars.items() if v[-1][0] == last}


def _diff_from_file(config: ml_collections.ConfigDict, base: str):
  """config_diff against a config file; None when the file does not exist."""
  if base.endswith(".json") or os.path.isfile(base):
    return config_diff(config, run_files.load_config_file(base))
  return None


def summarize(
  workdir: str,
  *,
  base: str | None = None,
  out: str | None = None,
  ema: float | None = None,
  num: int = 16,
) -> dict[str, Any]:
  """Everything format_summary prints, as a dict (see the module docstring).

  Args:
    workdir: the run directory (local or gs://).
    base: config file to diff against (default: configs/default.py).
    out: PNG path of the grids (default: WORKDIR/inspect_<step>.png).
    ema: EMA decay of the grids (default: the run's sample.ema_decay).
    num: samples per grid (0: no grids, no PNG).

  Returns:
    A dict; `batches`: uint8 samples per sampler (None when not drawn).
  """
  steps, damaged = checkpoints_on_disk(workdir)
  mesh = parallel.make_mesh(jax.devices()[:1])
  run = runs.load_run(workdir, mesh=mesh)
  config, state, ct = run.config, run.state, run.config.ct
  base = default_base() if base is None else base
  total = int(run.meta["total_steps"])
  n, c = curriculum(config, run.step, total)
  metrics_step, metrics = _last_metrics(workdir)
  ema = float(config.sample.ema_decay if ema is None else ema)
  params = state.ema(ema)  # An untracked decay fails here, before sampling.
  s = {
    "workdir": workdir,
    "steps": steps,
    "damaged": damaged,
    "step": run.step,
    "total_steps": total,
    "base": base,
    "config_diff": _diff_from_file(config, base),
    "params": param_counts(state.params),
    "ema_decays": tuple(state.ema_decays),
    "nonfinite": int(jax.device_get(state.nonfinite)),
    "num_scales": n,
    "c": c,
    "c_schedule": ct.c_schedule,
    "stages": analysis.stage_scales(ct.start_scales, ct.end_scales),
    "metrics_step": metrics_step,
    "metrics": metrics,
    "ema": ema,
    "batches": None,  # Not drawn; {} when latents cannot be decoded.
    "png": None,
  }
  if num > 0:
    s["batches"] = sample_batches(config, params, num, mesh)
  if s["batches"]:
    s["png"] = out or storage.join(workdir, f"inspect_{run.step}.png")
    write_grids(s["png"], s["batches"])
  return s


def _fmt(v: Any) -> str:
  return "''" if v == "" else str(v)


def format_summary(s: dict[str, Any]) -> str:
  """The terminal text of a summarize() dict."""
  lines = [
    f"run: {s['workdir']}",
    f"checkpoints: {', '.join(map(str, s['steps'])) or 'none'} (restored "
    f"step {s['step']} of {s['total_steps']} total steps)",
    f"damaged_checkpoints: {', '.join(s['damaged']) or 'none'}",
  ]
  if s["steps"] and s["step"] != s["steps"][-1]:
    lines[1] += "; newer steps failed verification (see the log)"
  if s["config_diff"] is None:
    lines.append(f"config: base {s['base']} not found (pass --base=FILE)")
  else:
    n = len(s["config_diff"])
    lines.append(f"config: {n} field(s) differ from {s['base']}:")
    lines += [f"  {k}: {_fmt(a)} ({_fmt(b)})" for k, a, b in s["config_diff"]]
  counts = s["params"]
  lines.append(f"parameters: {sum(counts.values()):,} in {len(counts)} modules")
  width = max(map(len, counts), default=0)
  lines += [f"  {k:<{width}}  {v:>12,}" for k, v in sorted(counts.items())]
  stages, n = s["stages"], s["num_scales"]
  stage = stages.index(n) + 1 if n in stages else "?"
  lines += [
    f"ema_decays: {', '.join(map(str, s['ema_decays']))}",
    f"nonfinite: {s['nonfinite']} skipped steps",
    f"curriculum: N = {n} (stage {stage} of {len(stages)}: "
    f"{', '.join(map(str, stages))})",
    f"c: {s['c']:.6g} ({s['c_schedule']})",
  ]
  if s["metrics"]:
    lines.append(f"metrics at step {s['metrics_step']}:")
    lines += [f"  {k}: {v:.6g}" for k, v in sorted(s["metrics"].items())]
  else:
    lines.append("metrics: none (no scalars in the event files)")
  if s["png"]:
    names = ", ".join(s["batches"])
    num = len(next(iter(s["batches"].values())))
    lines.append(
      f"grids: {s['png']} ({names} left to right, {num} samples "
      f"each, EMA {s['ema']})"
    )
  elif s["batches"] is None:
    lines.append("grids: not drawn (num=0)")
  else:
    lines.append("grids: none (latents cannot be decoded without vae.path)")
  return "\n".join(lines)


_USAGE = "usage: python -m ilct_jax.lab.inspect_run WORKDIR [--flags]"


def _flag_values() -> flags.FlagValues:
  """The command's absl flags, on a FlagValues of its own."""
  fv = flags.FlagValues()
  define = dict(flag_values=fv)
  flags.DEFINE_string("base", None, "Config to diff against.", **define)
  flags.DEFINE_string("out", None, "PNG of the sample grids.", **define)
  flags.DEFINE_float("ema", None, "EMA decay (0 = online).", **define)
  flags.DEFINE_integer("num", 16, "Samples per grid.", **define)
  return fv


def main(argv: list[str]) -> None:
  """The command line (see the module docstring; absl flag syntax)."""
  fv = _flag_values()
  rest = cli.parse_own(fv, argv, _USAGE)
  if len(rest) != 1:
    raise SystemExit(_USAGE)
  analysis.quiet_logs()
  summary = summarize(rest[0], base=fv.base, out=fv.out, ema=fv.ema, num=fv.num)
  print(format_summary(summary))


if __name__ == "__main__":
  main(sys.argv[1:])
