"""Entry point: `python -m ilct_jax.main --config=configs/X.py --workdir=DIR`.

Intentionally short (flax examples style): flags, cluster start-up and the
mode. `--mode=sample` and `--mode=eval` read the run's config.json when no
`--config` is given (`--config.x=y` overrides still apply). Exit codes: 0 done
(also for a run that was already complete), 75 preempted after a checkpoint
(run the same command again), 1 error.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ilct_jax import checkpointing, parallel, preemption, reporting, train
from ilct_jax.evaluation import evaluate, generate

MODES = ("train", "sample", "eval")
FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", "configs/demo.py", "Config file.", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Run directory (local or gs://).")
  flags.DEFINE_enum("mode", "train", MODES, "What to run.")
  parallel.define_cluster_flags()
  flags.mark_flags_as_required(["workdir"])


def run_config():
  """--config, or for sample/eval without it: config.json + overrides."""
  if FLAGS.mode == "train" or FLAGS["config"].present:
    return FLAGS.config
  config = checkpointing.read_config(FLAGS.workdir)
  for name in FLAGS:
    if name.startswith("config.") and FLAGS[name].present:
      node, *path, leaf = [config, *name.split(".")[1:]]
      for key in path:
        node = node[key]
      value = FLAGS[name].value
      node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def main(argv):
  del argv
  jax.config.update("jax_threefry_partitionable", True)
  reporting.quiet_tensorflow()  # Before anything imports it.
  checkpointing.quiet_orbax_logs()
  parallel.initialize_cluster(
    FLAGS.distributed,
    FLAGS.coordinator_address,
    FLAGS.num_processes,
    FLAGS.process_id,
    FLAGS.local_device_ids,
  )
  config, workdir = run_config(), FLAGS.workdir
  if FLAGS.mode == "train":
    try:
      train.train_and_evaluate(config, workdir)
    except preemption.Preempted as e:
      logging.warning("%s", e)
      sys.exit(preemption.EXIT_PREEMPTED)
  elif FLAGS.mode == "sample":
    generate.run(config, workdir)
  else:
    evaluate.run(config, workdir)


def run_or_explain_config_error() -> None:
  """app.run(main), with a --config override typo reported in one line."""
  try:
    app.run(main)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if FLAGS.is_parsed():
      raise  # Not a flag-parsing problem: keep the full traceback.
    msg = str(e).replace("\\n", " ").replace("\\'", "'")
    msg = " ".join(msg.replace("'", "").split())
    sys.exit(
      f"error: bad --config override ({msg}); every field and its meaning "
      "is listed in configs/default.py"
    )


if __name__ == "__main__":
  define_flags()
  run_or_explain_config_error()
