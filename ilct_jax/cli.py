"""Command-line plumbing shared by the programs (main, eval, preflight).

The config of a mode that opens an existing run (its config.json plus any
`--config.x=y` overrides), and `app.run` with `--config` resolved from any
directory and an override typo reported in one line. Starting the cluster
and the compile cache are `parallel.start_cluster`.
"""

import sys
from collections.abc import Callable

import ml_collections
from absl import app, flags

from ilct_jax import config_files, run_config


def config_of_run(
  values: flags.FlagValues, workdir: str
) -> ml_collections.ConfigDict:
  """WORKDIR/config.json with the command line's `--config.x=y` applied.

  Used when `--config` itself is not given: the run says how it was trained.
  """
  config = run_config.read_config(workdir)
  for name in values:
    if name.startswith("config.") and values[name].present:
      node, *path, leaf = [config, *name.split(".")[1:]]
      for key in path:
        node = node[key]
      value = values[name].value
      node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def run(main: Callable[[list[str]], None]) -> None:
  """app.run(main), with `--config` resolved from any directory or by short
  name (`ilct_jax.config_files`) and a --config override typo reported in
  one line."""
  config_files.resolve_sys_argv()
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
