"""The training loop: set-up, resume, periodic actions, preemption.

`train_and_evaluate` wires the pieces owned elsewhere: config checks, the mesh
(parallel.py) and jitted step (step.py), the verified restore
(checkpointing.py), input (data/pipeline.py), sample grids
(evaluation/write_samples.py), FID during training (evaluation/evaluate.py) and
clu metric writers (imported lazily: they pull in TensorFlow).

Start-up order: checks, run facts, restore of the newest verified checkpoint
into an abstract sharded state (no initialisation when resuming), and only
then anything that changes the workdir (config.json). A run whose last
checkpoint is at its final step returns at once, compiling nothing. A fresh
run compiles its step against the abstract state before creating the real
one, so the compiler's transient memory (2.3 GiB for the paper UNet at
batch 8 on CPU) never adds to the state's (docs/DESIGN.md, speed).
"""

from typing import Any

import jax
import ml_collections
from absl import logging

from ilct_jax import (
  checkpointing,
  config_checks,
  hostmem,
  parallel,
  preemption,
  reporting,
  run_config,
  storage,
)
from ilct_jax import progress as progress_lib
from ilct_jax import setup as setup_lib
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.data import pipeline
from ilct_jax.evaluation import evaluate, image_files
from ilct_jax.evaluation import write_samples as sample_files

Metrics = dict[str, Any]


# The run's step count and facts live with the Setup; kept here by name.
total_steps = setup_lib.total_steps
run_meta = setup_lib.run_meta


def compile_step(config, mesh, state, steps: int):
  """AOT-compiles the train step; logs compile time and memory.

  Returns:
    The compiled step; its `stats` attribute holds compile seconds and the
    step's memory per device (MiB) for TensorBoard.
  """
  compiled, seconds = step_lib.compile_ahead(config, mesh, state, steps)
  stats = {"compile_seconds": seconds}
  logging.info("Compiled train step in %.1fs", stats["compile_seconds"])
  # What the compilers freed goes back to the OS before the state or the
  # loop needs it (ilct_jax/hostmem.py).
  rss = hostmem.rss_gib()
  if hostmem.release_free_memory():
    after = hostmem.rss_gib()
    logging.info("Host memory: %.2f -> %.2f GiB resident", rss, after)
  mem = compiled.memory_analysis()
  if mem is not None:
    args = mem.argument_size_in_bytes / 2**20
    temps = mem.temp_size_in_bytes / 2**20
    stats.update(step_args_mib=args, step_temps_mib=temps)
    logging.info(
      "Step memory per device: args %.1f MiB, temps %.1f MiB", args, temps
    )
  return _Compiled(compiled, stats)


class _Compiled:
  """A compiled step with the figures of its compilation."""

  def __init__(self, compiled, stats: dict[str, float]):
    self.compiled, self.stats = compiled, stats

  def __call__(self, state, batch):
    return self.compiled(state, batch)


def write_samples(config, state, writers, workdir: str, step: int) -> None:
  """1-step and 2-step sample grids to TensorBoard and workdir/samples."""
  params = state.ema(config.sample.ema_decay)
  samples = sample_files.sample_images(config, params, config.sample.num)
  for name, (_, images) in samples.items():
    if images is None:
      continue
    grid = image_files.make_grid(images)
    writers.all.write_images(step, {f"samples/{name}": grid[None]})
    if jax.process_index() == 0:
      path = storage.join(workdir, "samples", f"{name}_{step:08d}.png")
      sample_files.write_grid(path, images)


def create_writer(workdir: str, config=None) -> reporting.Writers:
  """The run's writers (event files in `workdir`, process 0; and wandb when
  config.log.wandb_project is set)."""
  return reporting.Writers(workdir, config)


def _resume(setup: setup_lib.Setup, mngr):
  """The restored (verified) state, or None when the workdir has none."""
  if mngr.latest_step() is None:
    return None
  try:
    state, saved = checkpointing.restore(
      mngr, setup.config, setup.abstract_state
    )
    checkpointing.check_meta(saved, setup.meta)
  except Exception:
    mngr.close()  # A refused resume leaves no orbax threads behind.
    raise
  return state


def _log_plan(config, meta, mesh, start: int) -> None:
  logging.info(
    "Training steps %d..%d (%d examples, global batch %d over %d devices "
    "in %d processes)",
    start,
    meta["total_steps"],
    meta["num_examples"],
    config.train.batch_size,
    mesh.size,
    jax.process_count(),
  )


def _start_logs(config, workdir, state, start: int) -> reporting.Writers:
  """The writers; at step 0 also the config and the parameter overview."""
  writers = create_writer(workdir, config)
  if start == 0:
    writers.hparams(config)
    if jax.process_index() == 0:
      overview = reporting.parameter_overview(jax.device_get(state.params))
      logging.info("Parameters:\n%s", overview)
  return writers


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  mesh: jax.sharding.Mesh | None = None,
) -> state_lib.TrainState:
  """Trains (resuming from workdir if it holds a checkpoint).

  Args:
    config: the full config.
    workdir: directory (local or gs://) for checkpoints, logs, samples and
      config.json.
    mesh: the devices to train on (default: all devices of all processes).
      Checkpoints restore on any device count.

  Returns:
    The final TrainState.

  Raises:
    preemption.Preempted: a SIGTERM stopped the run after a checkpoint.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  # Watched from the start: a SIGTERM during the restore or the compile
  # stops the run after its first step (with a checkpoint there).
  watcher = preemption.Watcher()
  try:
    return _train(config, workdir, mesh, watcher)
  finally:
    watcher.close()


def _train(config, workdir: str, mesh, watcher) -> state_lib.TrainState:
  config_checks.check_all(config, workdir, num_devices=mesh.size)
  if config.train.eval_every > 0:  # Fail before training, not at step K.
    evaluate.check_eval_config(config)
  setup = setup_lib.build(config, mesh, pipeline.num_examples(config))
  mesh = setup.mesh  # With the "fsdp" axis of train.fsdp > 1.
  meta, steps = setup.meta, setup.total_steps
  keep_from = checkpointing.window_start(
    config.train, steps, meta["num_examples"]
  )
  mngr = checkpointing.create_manager(
    workdir, config.train, keep_from=keep_from
  )
  state = _resume(setup, mngr)
  start = 0 if state is None else int(jax.device_get(state.step))
  if start >= steps:
    logging.info("Run complete: step %d of %d; nothing to do", start, steps)
    mngr.close()
    return state
  _log_plan(config, meta, mesh, start)
  run_config.write_config(config, workdir)  # Only after the checks.
  if state is None:  # Compile first: the compiler's garbage meets no state.
    train_fn = compile_step(config, mesh, setup.abstract_state, steps)
    state = setup.create_state()
    hostmem.release_free_memory()  # What the init's compile freed.
  else:
    train_fn = compile_step(config, mesh, state, steps)
  writers = _start_logs(config, workdir, state, start)
  writers.all.write_scalars(start, getattr(train_fn, "stats", {}))
  run = _Run(config, workdir, mngr, meta, writers, train_fn)
  state, stopped = run.run(state, mesh, start, watcher)
  if not stopped and config.train.sample_every:
    if steps % config.train.sample_every:
      write_samples(config, state, writers, workdir, steps)
  writers.close()
  if stopped:
    raise preemption.Preempted(int(jax.device_get(state.step)))
  return state


class _Run:
  """The step loop with its periodic actions (log, samples, checkpoints)."""

  def __init__(self, config, workdir, mngr, meta, writers, train_fn):
    self.config, self.workdir, self.mngr = config, workdir, mngr
    self.meta, self.writers, self.train_fn = meta, writers, train_fn
    self.steps = meta["total_steps"]
    self.progress = progress_lib.train_progress(
      self.steps, config.train.batch_size, writers.all
    )
    self.profiler = reporting.make_profiler(config.train, workdir)

  def run(self, state, mesh, start: int, watcher) -> tuple[Any, bool]:
    """The loop with its input and final checkpoint; `watcher` says when
    a SIGTERM asks it to stop."""
    batches = pipeline.create_iterator(self.config, mesh, start_step=start)
    try:
      state, stopped = self.loop(state, batches, start, watcher)
    finally:
      batches.close()
      self.mngr.wait_until_finished()  # An in-flight save ends, even on error.
    final = int(jax.device_get(state.step))
    checkpointing.save(self.mngr, state, self.meta, step=final, force=True)
    self.mngr.close()  # Waits for the save, then releases orbax's threads.
    return state, stopped

  def loop(self, state, batches, start: int, stop) -> tuple[Any, bool]:
    """Runs steps start..total; returns (state, stopped early)."""
    cfg, timed = self.config.train, self.progress.timed
    history = []
    for step in range(start, self.steps):
      state, metrics = self.train_fn(state, next(batches))
      history.append(metrics)
      done = step + 1
      self.progress(done)
      if self.profiler is not None:
        self.profiler(done)
      if done % cfg.log_every == 0 or done == self.steps:
        scalars = reporting.write_window(self.writers, done, history)
        history = []
        if self.config.data.bad_records == "skip":
          skipped = {"data/bad_records_skipped": batches.skipped()}
          self.writers.all.write_scalars(done, skipped)
        self._check_nonfinite(scalars)
      if cfg.sample_every and done % cfg.sample_every == 0:
        with timed("samples"):
          write_samples(self.config, state, self.writers, self.workdir, done)
      if cfg.eval_every and done % cfg.eval_every == 0:
        with timed("fid"):
          evaluate.train_time_fid(self.config, state, done, self.writers.all)
      if self.mngr.should_save(done):
        with timed("checkpoints"):
          checkpointing.save(self.mngr, state, self.meta, step=done)
      if done < self.steps and stop(done):
        logging.warning("Stopping at step %d: saving a checkpoint", done)
        return state, True
    return state, False

  def _check_nonfinite(self, scalars: dict) -> None:
    limit = self.config.train.max_nonfinite
    policy = self.config.train.nonfinite
    if policy == "halt" and scalars["nonfinite"] > limit:
      raise FloatingPointError(
        f"{int(scalars['nonfinite'])} non-finite steps were skipped (limit "
        f"train.max_nonfinite={limit}); lower optim.lr or check the data; "
        f"the last checkpoint is step {self.mngr.latest_step()}"
      )
