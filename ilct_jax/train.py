"""The training loop: set-up, resume, periodic logging, samples, checkpoints.

`train_and_evaluate` wires the pieces owned elsewhere: config checks, the mesh
and jitted step (step.py), state creation/restore (state.py,
checkpointing.py), input (data/pipeline.py), sample grids
(evaluation/generate.py) and clu metric writers (imported lazily: they pull
in TensorFlow).
"""

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ilct_jax import checkpointing, config_checks, parallel
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.data import pipeline
from ilct_jax.evaluation import evaluate, generate, image_io


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  """K = (num_examples // global_batch) * epochs, or train.num_steps."""
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return (num_examples // config.train.batch_size) * config.train.epochs


def run_meta(config: ml_collections.ConfigDict, num_examples: int) -> dict:
  """Facts stored with each checkpoint and checked on resume."""
  return {
    "total_steps": total_steps(config, num_examples),
    "num_examples": num_examples,
    "example_shape": list(state_lib.example_shape(config)),
    "batch_size": config.train.batch_size,
  }


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config to workdir/config.json (host 0)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def compile_step(config, mesh, state, steps: int):
  """AOT-compiles the train step; logs compile time and memory."""
  fn = step_lib.compile_train_step(config, mesh, steps)
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  batch = jax.ShapeDtypeStruct(
    shape, np.float32, sharding=parallel.batch_sharding(mesh)
  )
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  logging.info("Compiled train step in %.1fs", time.perf_counter() - t0)
  mem = compiled.memory_analysis()
  if mem is not None:
    logging.info(
      "Step memory per device: args %.1f MiB, temps %.1f MiB",
      mem.argument_size_in_bytes / 2**20,
      mem.temp_size_in_bytes / 2**20,
    )
  return compiled


def write_samples(config, state, writer, workdir: str, step: int) -> None:
  """1-step and 2-step sample grids to TensorBoard and workdir/samples."""
  os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
  images = generate.sample_images(config, state, num=config.sample.num)
  for name, imgs in images.items():
    if imgs is None:
      continue
    grid = image_io.make_grid(imgs)
    writer.write_images(step, {f"samples/{name}": grid[None]})
    if jax.process_index() == 0:
      path = os.path.join(workdir, "samples", f"{name}_{step:08d}.png")
      image_io.save_png(path, grid, upscale=max(1, 128 // imgs.shape[1]))


def _log(writer, step: int, history: list[dict[str, Any]], t0: float) -> dict:
  """Averages the buffered metrics, writes them, returns the last values."""
  fetched = jax.device_get(history)
  scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  scalars["nonfinite"] = float(fetched[-1]["nonfinite"])
  scalars["steps_per_sec"] = len(history) / max(time.perf_counter() - t0, 1e-9)
  writer.write_scalars(step, scalars)
  return scalars


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Trains (resuming from workdir if it holds a checkpoint).

  Args:
    config: the full config.
    workdir: directory for checkpoints, logs, samples and config.json.

  Returns:
    The final TrainState.
  """
  from clu import metric_writers  # Lazy: imports TF.

  config_checks.check_all(config, workdir)
  if config.train.eval_every > 0:  # Fail before training, not at step K.
    evaluate.check_eval_config(config)
  mesh = parallel.make_mesh()
  n_examples = pipeline.num_examples(config)
  meta = run_meta(config, n_examples)
  steps = meta["total_steps"]
  logging.info(
    "Training %d steps (%d examples, batch %d, %d devices)",
    steps,
    n_examples,
    config.train.batch_size,
    jax.device_count(),
  )
  write_config(config, workdir)
  mngr = checkpointing.create_manager(workdir, config.train)
  state = state_lib.create_train_state(config, mesh)
  if mngr.latest_step() is not None:
    try:
      state, saved = checkpointing.restore(mngr, config, state)
      checkpointing.check_meta(saved, meta)
    except Exception:
      mngr.close()  # A refused resume leaves no orbax threads behind.
      raise
  start = int(jax.device_get(state.step))
  writer = metric_writers.create_default_writer(
    workdir, just_logging=jax.process_index() > 0
  )
  if start == 0:
    writer.write_hparams(_flat_hparams(config))
  train_fn = compile_step(config, mesh, state, steps)
  run = _Run(config, workdir, mngr, meta, writer, train_fn)
  batches = pipeline.create_iterator(config, mesh, start_step=start)
  try:
    state = run.loop(state, batches, start)
  finally:
    batches.close()
    mngr.wait_until_finished()  # Let an in-flight save finish, even on error.
  final = int(jax.device_get(state.step))
  checkpointing.save(mngr, state, meta, step=final, force=True)
  mngr.close()  # Waits for the save, then releases orbax's threads.
  if final == steps and config.train.sample_every:
    if steps % config.train.sample_every:
      write_samples(config, state, writer, workdir, steps)
  writer.flush()
  return state


class _Run:
  """The step loop with its periodic actions (log, samples, checkpoints)."""

  def __init__(self, config, workdir, mngr, meta, writer, train_fn):
    from clu import periodic_actions  # Lazy: imports TF.

    self.config, self.workdir, self.mngr = config, workdir, mngr
    self.meta, self.writer, self.train_fn = meta, writer, train_fn
    self.steps = meta["total_steps"]
    self.progress = periodic_actions.ReportProgress(
      num_train_steps=self.steps, writer=writer
    )

  def loop(self, state, batches, start: int):
    """Runs steps start..total (or until preemption); returns the state."""
    cfg = self.config.train
    history, t_log = [], time.perf_counter()
    for step in range(start, self.steps):
      state, metrics = self.train_fn(state, next(batches))
      history.append(metrics)
      done = step + 1
      self.progress(done)
      if done % cfg.log_every == 0 or done == self.steps:
        scalars = _log(self.writer, done, history, t_log)
        history, t_log = [], time.perf_counter()
        self._check_nonfinite(scalars)
      if cfg.sample_every and done % cfg.sample_every == 0:
        write_samples(self.config, state, self.writer, self.workdir, done)
      if cfg.eval_every and done % cfg.eval_every == 0:
        evaluate.train_time_fid(self.config, state, done, self.writer)
      checkpointing.save(self.mngr, state, self.meta, step=done)
      if self.mngr.reached_preemption(done):
        logging.warning("Preemption at step %d: saving and exiting", done)
        break
    return state

  def _check_nonfinite(self, scalars: dict) -> None:
    limit = self.config.train.max_nonfinite
    if scalars["nonfinite"] > limit:
      raise FloatingPointError(
        f"{int(scalars['nonfinite'])} non-finite steps were skipped (limit "
        f"train.max_nonfinite={limit}); lower optim.lr or check the data; "
        f"the last good checkpoint is step {self.mngr.latest_step()}"
      )


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Config flattened to scalar hparams for TensorBoard."""
  out = {}

  def walk(prefix: str, node: Any) -> None:
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, ml_collections.ConfigDict):
        walk(key + ".", v)
      elif isinstance(v, (int, float, str, bool)):
        out[key] = v
      else:
        out[key] = json.dumps(list(v)) if isinstance(v, tuple) else str(v)

  walk("", config)
  return out
