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
  ILCT_TEST_PROGRAM=encode   run `ilct_jax.data.encode` instead of main.
"""

import os
import time

import jax

from ilct_jax import checkpointing, cli, main, train

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


def install_hooks() -> None:
  if _ENV.get("ILCT_TEST_HANG_AFTER"):
    _hang_after(int(_ENV["ILCT_TEST_HANG_AFTER"]), _ENV["ILCT_TEST_READY"])
  if _ENV.get("ILCT_TEST_STEP_SLEEP") or _ENV.get("ILCT_TEST_PROGRESS"):
    seconds = float(_ENV.get("ILCT_TEST_STEP_SLEEP", "0"))
    _slow_steps(seconds, _ENV.get("ILCT_TEST_PROGRESS", ""))
  if _ENV.get("ILCT_TEST_LOCAL_TB"):
    _local_tensorboard(_ENV["ILCT_TEST_LOCAL_TB"])


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
