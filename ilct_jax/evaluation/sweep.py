"""Checkpoint selection as the paper did it: kept steps x EMAs, ranked by FID.

  python -m ilct_jax.main --workdir=DIR --mode=sweep [--config.eval.x=y ...]

The authors report, per dataset, the best FID over the checkpoints of the
last 100 epochs and several EMAs (docs/ALGORITHM.md §13; their fid.txt).
`run` evaluates every kept checkpoint step of the workdir with every EMA of
`ema.decays` (the full `eval.*` protocol of `--mode=eval`), appends each
result to WORKDIR/eval/metrics_sweep.json as soon as it is measured, and
skips pairs already there, so an interrupted sweep resumes where it stopped.
It prints one table ranked by the first sampler's FID. A FID measured
during training (`train.eval_every`, `eval.train_num_samples`) is a cheaper
proxy for choosing, never the number to report.
"""

from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from ilct_jax import checkpointing, runs, storage
from ilct_jax import setup as setup_lib
from ilct_jax.evaluation import evaluate

SWEEP_FILE = "metrics_sweep.json"
Config = ml_collections.ConfigDict


def sweep_path(workdir: str) -> str:
  return storage.join(workdir, "eval", SWEEP_FILE)


def read_rows(path: str) -> list[dict[str, Any]]:
  """The rows measured so far ([] when the sweep has not started)."""
  if not storage.exists(path):
    return []
  fix = "delete it to start the sweep again"
  return list(storage.read_json(path, "the sweep file", fix)["rows"])


def plan(steps, decays) -> list[tuple[int, float]]:
  """(step, EMA decay) pairs, newest step first."""
  return [(s, d) for s in sorted(steps, reverse=True) for d in decays]


def ranked(rows: list[dict[str, Any]], sampler: str) -> list[dict[str, Any]]:
  return sorted(rows, key=lambda r: r["samplers"][sampler]["fid"])


def table(rows: list[dict[str, Any]], samplers) -> str:
  """Markdown, best first by the first sampler's FID."""
  head = "| rank | step | EMA | " + " | ".join(f"FID {s}" for s in samplers)
  out = [head + " |", "|" + "---|" * (3 + len(samplers))]
  for i, r in enumerate(ranked(rows, samplers[0]), 1):
    fids = " | ".join(f"{r['samplers'][s]['fid']:.3f}" for s in samplers)
    out.append(f"| {i} | {r['step']} | {r['ema_decay']:g} | {fids} |")
  return "\n".join(out)


def _open(workdir: str, config: Config, setup, step: int, decay: float):
  """One (step, EMA) of the run, against the sweep's one abstract state."""
  return runs.load_run(
    workdir,
    config=config,
    step=step,
    what="ema",
    ema_decay=decay,
    mesh=setup.mesh,
    abstract=setup.abstract_state,
  )


def run(
  config: Config,
  workdir: str,
  *,
  steps=None,
  evaluate_fn: Callable[[Config, Any, int], dict] | None = None,
  log=print,
) -> list[dict[str, Any]]:
  """Evaluates every (kept step, EMA) pair not yet in metrics_sweep.json.

  Args:
    steps: checkpoint steps (default: every step kept in the workdir).
    evaluate_fn: (config, params, num_samples) -> {sampler: metrics}
      (default: `evaluate.evaluate_params`, the --mode=eval protocol).

  Returns:
    All rows of the sweep, in file order.
  """
  if evaluate_fn is None:  # The --mode=eval protocol and its checks.
    evaluate.check_eval_config(config)
    evaluate_fn = evaluate.evaluate_params
  if steps is None:
    mngr = checkpointing.create_manager(workdir, config.train, read_only=True)
    steps = list(mngr.all_steps())
    mngr.close()
  if not steps:
    raise FileNotFoundError(
      f"no checkpoints under {workdir}; train first (--mode=train)"
    )
  path, setup = sweep_path(workdir), setup_lib.build(config)
  rows = read_rows(path)
  done = {(r["step"], r["ema_decay"]) for r in rows}
  todo = [p for p in plan(steps, config.ema.decays) if p not in done]
  log(f"sweep: {len(done)} done, {len(todo)} to evaluate -> {path}")
  for i, (step, decay) in enumerate(todo, 1):
    opened = _open(workdir, config, setup, step, decay)
    results = evaluate_fn(config, opened.params, config.eval.num_samples)
    rows.append(
      dict(
        step=step,
        ema_decay=decay,
        num_samples=config.eval.num_samples,
        protocol=config.eval.protocol,
        samplers=results,
      )
    )
    if jax.process_index() == 0:  # Each pair is kept as soon as measured.
      storage.write_json(path, {"rows": rows}, sort_keys=False)
    first = results[config.eval.samplers[0]]["fid"]
    log(f"sweep {i}/{len(todo)}: step {step} EMA {decay:g}: FID {first:.3f}")
    logging.info("sweep: step %d EMA %g: %s", step, decay, results)
  log(table(rows, tuple(config.eval.samplers)))
  return rows
