"""The config a command line of `python -m ilct_jax.main` builds, in-process.

Tests that run the program in the pytest process (instead of a subprocess)
parse the same `--config=... --config.x=y` flags with ml_collections'
config_flags, locked as the CLI locks them, so an override means the same
thing in both.
"""

from absl import flags
from ml_collections import config_flags


def parse(args: list[str]):
  """The ConfigDict of `args` (`--config=FILE` first, then overrides)."""
  fv = flags.FlagValues()
  argv = ["prog", *args]
  config_flags.DEFINE_config_file(
    "config", flag_values=fv, lock_config=True, sys_argv=argv
  )
  fv(argv)
  return fv.config
