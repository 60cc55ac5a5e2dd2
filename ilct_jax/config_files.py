"""Where a `--config` comes from: a path from any directory, or a short name.

The config files live in the top-level `configs` package (installed with
ilct_jax, editable or not), so `from configs import default` inside them
works from any working directory. A `--config` argument is resolved before
absl reads it: an existing path is used as given; `celeba` (a short name)
or `configs/celeba.py` from outside the repository resolve to the shipped
file; anything else is one clear error listing the shipped names.
"""

import os
import pathlib
import sys


def config_dir() -> pathlib.Path:
  """The folder of the shipped configs (the `configs` package)."""
  import configs  # noqa: PLC0415 (a package of config files, not code)

  return pathlib.Path(configs.__file__).resolve().parent


def names() -> list[str]:
  """Short names of the shipped configs (`demo`, `celeba`, ...)."""
  skip = {"__init__", "default", "recipe"}
  return sorted(p.stem for p in config_dir().glob("*.py") if p.stem not in skip)


def default_path() -> str:
  """The built-in default, configs/demo.py, as an absolute path."""
  return str(config_dir() / "demo.py")


def resolve(arg: str) -> str:
  """An existing config file path for a `--config` value."""
  path, sep, rest = arg.partition(":")  # config_flags' `file.py:arg` form.
  if os.path.isfile(os.path.expanduser(path)):
    return arg
  if "/" not in path and not path.endswith(".py"):
    candidate = config_dir() / f"{path}.py"
  else:
    candidate = config_dir() / pathlib.PurePath(path).name
    if pathlib.PurePath(path).parent.name != "configs":
      candidate = None
  if candidate is not None and candidate.is_file():
    return str(candidate) + sep + rest
  raise FileNotFoundError(
    f"--config={arg}: no such file (working directory {os.getcwd()}); give "
    f"a path to a config file or a shipped name: {', '.join(names())}"
  )


def resolve_argv(argv: list[str]) -> list[str]:
  """argv with each `--config=X` / `--config X` resolved (`resolve`)."""
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config="):
      a = "--config=" + resolve(a.split("=", 1)[1])
    elif a == "--config" and i + 1 < len(argv):
      out.append(a)
      i += 1
      a = resolve(argv[i])
    out.append(a)
    i += 1
  return out


def resolve_sys_argv() -> None:
  """Resolves sys.argv in place; a bad `--config` exits with one line."""
  try:
    sys.argv[:] = resolve_argv(sys.argv)
  except FileNotFoundError as e:
    sys.exit(f"error: {e}")
