"""`python -m ilct_jax.main` (or another program) with test hooks.

The cluster tests run this file instead of the module so that they can stop a
real run at a known place. Hooks, all from the environment:

  ILCT_TEST_HANG_AFTER=K     after the checkpoint of step K is written, create
                             $ILCT_TEST_READY.<process> and block forever (the
                             test then SIGKILLs the processes);
  ILCT_TEST_STEP_SLEEP=S     sleep S seconds after every train step, so that a
                             signal arrives in the middle of a run;
  ILCT_TEST_PROGRESS=PATH    after every step write its number to
                             PATH.<process>;
  ILCT_TEST_LOCAL_TB=DIR     write TensorBoard events to DIR (the GCS test:
                             TensorFlow's GCS client cannot be pointed at a
                             local emulator);
  ILCT_TEST_PROGRAM=encode   run `ilct_jax.data.encode` instead of main;
  ILCT_TEST_FILL_DISK=K:PATH after train step K, write PATH until the disk
                             holding it is full (ENOSPC), as another job
                             filling a shared disk would;
  ILCT_TEST_FAULT=MOMENT:SIG this process sends itself signal SIG (KILL or
                             TERM) at MOMENT: `step:K` after train step K,
                             `save:K` once the async save of step K has
                             started (while it is in flight), `restore` as
                             the restore of the newest checkpoint begins,
                             `start` as the program starts; only processes
                             listed in ILCT_TEST_FAULT_PROCESSES (default
                             all). Each firing appends a line to
                             $ILCT_TEST_EVENTS.<process> (tests/chaos.py).
"""

if __name__ == "__main__":  # As ilct_jax.main does, before JAX's import.
  from ilct_jax import faults

  faults.exit_on_early_sigterm()

import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from ilct_jax import checkpointing, cli, main, train  # noqa: E402

_ENV = os.environ


def _hang_after(step_to_hang: int, ready: str) -> None:
  real_save = checkpointing.save

  def save(mngr, state, meta, *, step, force=False):
    started = real_save(mngr, state, meta, step=step, force=force)
    if step == step_to_hang:
      mngr.wait_until_finished()
      with open(f"{ready}.{jax.process_index()}", "w") as f:
        f.write(str(step))
      while True:
        time.sleep(60)
    return started

  checkpointing.save = save


def _slow_steps(seconds: float, progress: str) -> None:
  real_compile = train.compile_step

  def compile_step(*args, **kwargs):
    fn = real_compile(*args, **kwargs)

    def step(state, batch):
      state, metrics = fn(state, batch)
      jax.block_until_ready(metrics)
      if progress:
        with open(f"{progress}.{jax.process_index()}", "w") as f:
          f.write(str(int(jax.device_get(state.step))))
      time.sleep(seconds)
      return state, metrics

    return step

  train.compile_step = compile_step


def _local_tensorboard(log_dir: str) -> None:
  real = train.create_writer
  train.create_writer = lambda workdir, config=None: real(log_dir, config)


def _process() -> int:
  """This process's index, from the command line (JAX may not be up yet)."""
  import sys

  for arg in sys.argv:
    if arg.startswith("--process_id="):
      return int(arg.split("=", 1)[1])
  return 0


def _fire(what: str, sig: str) -> None:
  """Records the moment, then sends this process `sig` (a real signal)."""
  events = _ENV.get("ILCT_TEST_EVENTS")
  if events:
    with open(f"{events}.{_process()}", "a") as f:
      f.write(f"{what} SIG{sig}\n")
  os.kill(os.getpid(), getattr(signal, f"SIG{sig}"))


def _faults(spec: str) -> None:
  """ILCT_TEST_FAULT: a signal at a chosen moment (see the docstring)."""
  moment, sig = spec.rsplit(":", 1)
  chosen = _ENV.get("ILCT_TEST_FAULT_PROCESSES", "")
  if chosen and str(_process()) not in chosen.split(","):
    return
  kind, _, arg = moment.partition(":")
  if kind == "start":
    _fire("start", sig)
  elif kind == "restore":
    real_restore = checkpointing.restore

    def restore(*args, **kwargs):
      _fire("restore", sig)
      return real_restore(*args, **kwargs)

    checkpointing.restore = restore
  elif kind == "save":
    real_save = checkpointing.save

    def save(mngr, state, meta, *, step, force=False):
      started = real_save(mngr, state, meta, step=step, force=force)
      if step == int(arg):
        flight = mngr.is_saving_in_progress()
        _fire(f"save:{step} in_flight={flight}", sig)
      return started

    checkpointing.save = save
  elif kind == "step":
    _after_step(int(arg), lambda: _fire(f"step:{arg}", sig))
  else:
    raise ValueError(f"unknown ILCT_TEST_FAULT moment {moment!r}")


def _after_step(at: int, action) -> None:
  """Runs `action()` once train step `at` has finished."""
  real_compile = train.compile_step

  def compile_step(*args, **kwargs):
    fn = real_compile(*args, **kwargs)

    def step(state, batch):
      state, metrics = fn(state, batch)
      if int(jax.device_get(state.step)) == at:
        action()
      return state, metrics

    return step

  train.compile_step = compile_step


def _fill_disk(spec: str) -> None:
  at, path = spec.split(":", 1)

  def fill() -> None:
    block = b"\0" * (1 << 16)
    with open(path, "wb", buffering=0) as f:
      try:
        while True:
          f.write(block)
      except OSError:  # ENOSPC: the disk is full now.
        pass

  _after_step(int(at), fill)


def install_hooks() -> None:
  if _ENV.get("ILCT_TEST_HANG_AFTER"):
    _hang_after(int(_ENV["ILCT_TEST_HANG_AFTER"]), _ENV["ILCT_TEST_READY"])
  if _ENV.get("ILCT_TEST_STEP_SLEEP") or _ENV.get("ILCT_TEST_PROGRESS"):
    seconds = float(_ENV.get("ILCT_TEST_STEP_SLEEP", "0"))
    _slow_steps(seconds, _ENV.get("ILCT_TEST_PROGRESS", ""))
  if _ENV.get("ILCT_TEST_LOCAL_TB"):
    _local_tensorboard(_ENV["ILCT_TEST_LOCAL_TB"])
  if _ENV.get("ILCT_TEST_FILL_DISK"):
    _fill_disk(_ENV["ILCT_TEST_FILL_DISK"])
  if _ENV.get("ILCT_TEST_FAULT"):
    _faults(_ENV["ILCT_TEST_FAULT"])


def _report_tensorflow() -> None:
  """At exit, one line saying whether this process imported TensorFlow."""
  import atexit
  import sys

  atexit.register(
    lambda: print(
      f"[worker {jax.process_index()}] tensorflow imported: "
      f"{'tensorflow' in sys.modules}",
      file=sys.stderr,
      flush=True,
    )
  )


if __name__ == "__main__":
  install_hooks()
  _report_tensorflow()
  if _ENV.get("ILCT_TEST_PROGRAM") == "encode":
    import runpy
    import sys

    sys.argv[0] = "ilct_jax.data.encode"
    runpy.run_module("ilct_jax.data.encode", run_name="__main__")
  else:
    main.define_flags()
    cli.run(main.main)
