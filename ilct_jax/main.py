"""Entry point: `python -m ilct_jax.main --config=configs/X.py --workdir=DIR`.

Intentionally short (flax examples style): parse flags, initialise
multi-host JAX when launched that way, and hand over to the library.
"""

import logging as logging_std
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

MODES = ("train", "sample", "eval")
_CONFIG = config_flags.DEFINE_config_file(
  "config", "configs/demo.py", "Training config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_MODE = flags.DEFINE_enum("mode", "train", MODES, "What to run.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() (TPU pods / SLURM multi-host).",
)


class _QuietOrbax(logging_std.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno > logging_std.INFO or "orbax" not in record.pathname


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietOrbax())
  jax.config.update("jax_threefry_partitionable", True)
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info(
    "JAX %s: process %d/%d, %d devices (%s)",
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.device_count(),
    jax.devices()[0].platform,
  )
  config, workdir = _CONFIG.value, _WORKDIR.value
  if _MODE.value == "train":
    from ilct_jax import train

    train.train_and_evaluate(config, workdir)
  elif _MODE.value == "sample":
    from ilct_jax import generate

    generate.run(config, workdir)
  else:
    from ilct_jax import evaluate

    evaluate.run(config, workdir)


def run_or_explain_config_error() -> None:
  """app.run(main), with a --config override typo reported in one line."""
  try:
    app.run(main)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    if flags.FLAGS.is_parsed():
      raise  # Not a flag-parsing problem: keep the full traceback.
    msg = str(e).replace("\\n", " ").replace("\\'", "'")
    msg = " ".join(msg.replace("'", "").split())
    sys.exit(
      f"error: bad --config override ({msg}); every field and its meaning "
      "is listed in configs/default.py"
    )


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  run_or_explain_config_error()
