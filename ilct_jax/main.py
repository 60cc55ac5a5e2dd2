"""Entry point: `python -m ilct_jax.main --config=configs/X.py --workdir=DIR`.

Intentionally short (flax examples style): flags, cluster start-up and the
mode. `--mode=sample`, `--mode=eval` and `--mode=sweep` (every kept checkpoint
x EMA, ranked by FID: evaluation/sweep.py) read the run's config.json when no
`--config` is given (`--config.x=y` overrides still apply). Exit codes: 0 done
(also for a run that was already complete), 75 preempted after a checkpoint
(run the same command again), 73 disk full, 74 storage unreachable, 65 a bad
data record (each with one line: `faults.py`), 1 a crash.
"""

from ilct_jax import hostmem

if __name__ == "__main__":
  hostmem.use_huge_pages()  # First: re-executes once, before heavy imports.
  from ilct_jax import faults

  faults.exit_on_early_sigterm()  # Before JAX's import (1-2 s).

import os
import sys
import threading

import jax
from absl import flags, logging
from ml_collections import config_flags

from ilct_jax import (
  checkpointing,
  cli,
  config_files,
  faults,
  parallel,
  preemption,
  reporting,
  storage,
  train,
)
from ilct_jax.evaluation import evaluate, sweep, write_samples

MODES = ("train", "sample", "eval", "sweep")
FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", config_files.default_path(), "Config file.", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Run directory (local or gs://).")
  flags.DEFINE_enum("mode", "train", MODES, "What to run.")
  parallel.define_cluster_flags()
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  jax.config.update("jax_threefry_partitionable", True)
  reporting.quiet_tensorflow()  # Before anything imports it.
  checkpointing.quiet_orbax_logs()
  parallel.start_cluster(FLAGS)
  workdir, config = FLAGS.workdir, FLAGS.config
  if FLAGS.mode != "train" and not FLAGS["config"].present:
    config = cli.config_of_run(FLAGS, workdir)
  t = config.train
  storage.set_retries(
    t.storage_retries, t.storage_max_delay_s, t.storage_initial_delay_s
  )
  try:
    _run_mode(config, workdir)
  except preemption.Preempted as e:
    logging.warning("%s", e)
    sys.exit(preemption.EXIT_PREEMPTED)
  except Exception as e:  # noqa: BLE001 - a fault exits with its own code.
    fault = faults.classify(e, workdir)
    if fault is None:
      raise
    logging.error("%s", fault.line)
    _exit_even_if_threads_hang(fault.code)


def _exit_even_if_threads_hang(code: int, grace_s: float = 5.0) -> None:
  """sys.exit(code); after a fault, orbax's save threads or gcsfs's event
  loop can block the interpreter's shutdown for good (seen with a store that
  stays down): a daemon timer then ends the process with the same code."""
  logging.flush()
  timer = threading.Timer(grace_s, os._exit, args=(code,))
  timer.daemon = True
  timer.start()
  sys.exit(code)


def _run_mode(config, workdir: str) -> None:
  if FLAGS.mode == "train":
    train.train_and_evaluate(config, workdir)
  elif FLAGS.mode == "sample":
    write_samples.run(config, workdir)
  elif FLAGS.mode == "sweep":
    sweep.run(config, workdir)
  else:
    evaluate.run(config, workdir)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
