"""Command-line plumbing shared by the programs (main, eval, preflight).

The config of a mode that opens an existing run (its config.json plus any
`--config.x=y` overrides), and `app.run` with `--config` resolved from any
directory and an override typo reported in one line. Starting the cluster
and the compile cache are `parallel.start_cluster`.
"""

import sys
from collections.abc import Callable, Sequence

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


def parse_own(
  fv: flags.FlagValues, argv: Sequence[str], usage: str
) -> list[str]:
  """Parses `argv` (no program name) into `fv`, a FlagValues of the
  command's own (so a lab program's `main(argv)` can run more than once in
  a process); returns the positional arguments. --help prints `usage` and
  the flags; a bad flag exits with one line and `usage`."""
  if {"-h", "--help", "--helpshort"} & set(argv):
    raise SystemExit(f"{usage}\n{fv.get_help()}")
  try:
    return fv(["program", *argv])[1:]
  except flags.Error as e:
    raise SystemExit(f"error: {e}\n{usage}") from None


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
