"""Command-line plumbing shared by the programs (main, encode, eval CLIs).

Starting the JAX cluster from the cluster flags, the config of a mode that
opens an existing run (its config.json plus any `--config.x=y` overrides),
and `app.run` with a `--config` override typo reported in one line.
"""

import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags

from ilct_jax import checkpointing, parallel


def start_cluster(values: flags.FlagValues) -> None:
  """`parallel.initialize_cluster` from the flags of define_cluster_flags."""
  parallel.initialize_cluster(
    values.distributed,
    values.coordinator_address,
    values.num_processes,
    values.process_id,
    values.local_device_ids,
  )


def config_of_run(
  values: flags.FlagValues, workdir: str
) -> ml_collections.ConfigDict:
  """WORKDIR/config.json with the command line's `--config.x=y` applied.

  Used when `--config` itself is not given: the run says how it was trained.
  """
  config = checkpointing.read_config(workdir)
  for name in values:
    if name.startswith("config.") and values[name].present:
      node, *path, leaf = [config, *name.split(".")[1:]]
      for key in path:
        node = node[key]
      value = values[name].value
      node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def run(main: Callable[[list[str]], None]) -> None:
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
