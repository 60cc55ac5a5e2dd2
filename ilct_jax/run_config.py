"""A run's config.json: written at the start, read back by every later mode.

`write_config` stores the resolved config (process 0); `read_config` lays
it over today's configs/default.py (`upgrade_config`), so a run written by
an earlier version opens with the fields added since at their defaults.
"""

from typing import Any

import jax
import ml_collections
from absl import logging

from ilct_jax import storage

CONFIG_FILE = "config.json"


def config_from_dict(data: dict[str, Any]) -> ml_collections.ConfigDict:
  """A config from its JSON form (lists become tuples, as configs write)."""

  def convert(v: Any) -> Any:
    if isinstance(v, dict):
      return ml_collections.ConfigDict({k: convert(x) for k, x in v.items()})
    if isinstance(v, list):
      return tuple(convert(x) for x in v)
    return v

  return convert(data)


def config_json(config: ml_collections.ConfigDict) -> str:
  """The resolved config as written to WORKDIR/config.json."""
  return config.to_json_best_effort(indent=2, sort_keys=True)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes WORKDIR/config.json (process 0)."""
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, CONFIG_FILE), config_json(config))


# Fields of earlier versions that today's code still reads, in place of the
# field that replaced them: a run from before `coupling.group_size` pairs
# noise and data as its `coupling.scope` said (coupling.legacy_group_size).
LEGACY_FIELDS = ("coupling.scope",)


def _merged(
  defaults: dict[str, Any],
  saved: dict[str, Any],
  prefix: str,
  added: list[str],
  unknown: list[str],
) -> dict:
  """`saved` laid over `defaults`; the paths each lacks go to the lists."""
  out = {}
  for key, default in defaults.items():
    path = prefix + key
    if key not in saved:
      added.append(path)
      out[key] = default
    elif isinstance(default, dict) and isinstance(saved[key], dict):
      out[key] = _merged(default, saved[key], path + ".", added, unknown)
    else:
      out[key] = saved[key]
  for key, value in saved.items():
    path = prefix + key
    if key in defaults:
      continue
    if path in LEGACY_FIELDS:
      out[key] = value
    else:
      unknown.append(path)
  return out


def upgrade_config(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A config.json's dict laid over today's defaults (configs/default.py).

  A run written by an earlier version lacks the fields added since: they
  take their defaults, which are what that version did (each new field's
  default keeps the old behaviour), and one log line names them. Fields
  this version does not know are named in a warning and dropped, except
  `LEGACY_FIELDS`: a run from before `coupling.group_size` keeps its
  `coupling.scope` and gets `group_size = None`, which tells the train step
  to pair as the scope did.
  """
  from configs import default  # noqa: PLC0415 (the installed config files)

  added, unknown = [], []
  merged = _merged(default.get_config().to_dict(), saved, "", added, unknown)
  if "scope" in merged["coupling"] and "coupling.group_size" in added:
    merged["coupling"]["group_size"] = None
  if added:
    logging.info(
      "config.json predates %d field(s), which take today's defaults: %s",
      len(added),
      ", ".join(added),
    )
  if unknown:
    logging.warning(
      "config.json has field(s) this version does not know, ignored: %s",
      ", ".join(unknown),
    )
  return config_from_dict(merged)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from WORKDIR/config.json, laid over
  today's defaults (`upgrade_config`), so runs of earlier versions open."""
  data = storage.read_json(
    storage.join(workdir, CONFIG_FILE),
    "run config",
    "pass --config (and the run's overrides) to say how it was trained",
  )
  return upgrade_config(data)
