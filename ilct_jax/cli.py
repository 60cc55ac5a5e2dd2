"""Command-line plumbing shared by the programs (main, encode, eval CLIs).

Starting the JAX cluster from the cluster flags (and the persistent compile
cache of --compile_cache), the config of a mode that opens an existing run
(its config.json plus any `--config.x=y` overrides), and `app.run` with a
`--config` override typo reported in one line.
"""

import os
import sys
from collections.abc import Callable

import jax
import ml_collections
from absl import app, flags, logging

from ilct_jax import config_files, parallel, run_config

# Programs that compile in less are not worth a disk entry (JAX's default).
CACHE_MIN_COMPILE_SECONDS = 1.0


def start_cluster(values: flags.FlagValues) -> None:
  """`parallel.initialize_cluster` from the flags of define_cluster_flags,
  then the compile cache of --compile_cache."""
  parallel.initialize_cluster(
    values.distributed,
    values.coordinator_address,
    values.num_processes,
    values.process_id,
    values.local_device_ids,
  )
  enable_compile_cache(values.compile_cache)


def enable_compile_cache(path: str) -> str | None:
  """JAX's persistent compilation cache in `path` ("" = off); the dir used.

  A restart (after preemption, `--mode=sample`, `--mode=eval`) then loads the
  compiled train step and state init instead of compiling them again
  (docs/DESIGN.md, start-up). JAX keys entries on the program, the compile
  options, the devices and its own version, so a changed config or upgrade
  compiles afresh. A dir already configured (JAX_COMPILATION_CACHE_DIR in
  the environment, which JAX reads at import) wins over the flag.
  """
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return configured
  if not path:
    return None
  path = os.path.expanduser(path)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update(
    "jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS
  )
  logging.info("Compile cache: %s", path)
  return path


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
