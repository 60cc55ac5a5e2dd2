"""A run's config.json: written at the start, read back by every later mode.

`write_config` stores the resolved config (process 0); `read_config` lays
it over today's configs/default.py (`upgrade_config`), so a run written by
an earlier version opens with the fields added since at their defaults.
"""

from typing import Any

import jax
import ml_collections

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


def _merged(defaults: dict[str, Any], saved: dict[str, Any]) -> dict:
  out = dict(defaults)
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _merged(out[key], value)
    else:
      out[key] = value
  return out


def upgrade_config(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """A config.json's dict laid over today's defaults (configs/default.py).

  A run written by an earlier version lacks the fields added since; they
  take their defaults, which are what that version did (each new field's
  default keeps the old behaviour). Fields since removed stay as written.
  One translation: a run from before `coupling.group_size` keeps its
  `coupling.scope`, which the train step reads in its place.
  """
  from configs import default  # noqa: PLC0415 (the installed config files)

  merged = _merged(default.get_config().to_dict(), saved)
  coupling = saved.get("coupling", {})
  if "scope" in coupling and "group_size" not in coupling:
    merged["coupling"].pop("group_size", None)
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
