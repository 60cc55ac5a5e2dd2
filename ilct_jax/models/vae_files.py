"""A converted VAE on disk: `save_vae`, `read_checkpoint`, `load_vae`.

Checkpoint format (written by `save_vae`, read by `load_vae`): a directory with
* `config.json`: the architecture fields of `AutoencoderKL` below plus
  `format` ("ilct_jax.vae/1") and free-form provenance (e.g. `scaling_factor`,
  `source`);
* `params.npz`: one float32 array per parameter, keyed by its "/"-joined path.

Every error names the file and the fix (re-run `convert_vae`).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ilct_jax import storage
from ilct_jax.models.vae import (
  ARCH_FIELDS,
  AutoencoderKL,
  PyTree,
  abstract_params,
  flatten,
)

FORMAT = "ilct_jax.vae/1"
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.npz"


def config_dict(vae: AutoencoderKL) -> dict[str, Any]:
  """The architecture fields of `vae` as a JSON-ready dict."""
  out = {f: getattr(vae, f) for f in ARCH_FIELDS}
  out["block_out_channels"] = list(out["block_out_channels"])
  return out


def check_param_shapes(vae: AutoencoderKL, flat: dict[str, Any]) -> None:
  """Raises a one-line ValueError unless `flat` has exactly `vae`'s params."""
  want = {k: tuple(v.shape) for k, v in flatten(abstract_params(vae)).items()}
  missing = sorted(set(want) - set(flat))
  unexpected = sorted(set(flat) - set(want))
  mismatched = [
    f"{k} {tuple(np.shape(flat[k]))} != {want[k]}"
    for k in sorted(set(want) & set(flat))
    if tuple(np.shape(flat[k])) != want[k]
  ]
  if missing or unexpected or mismatched:
    raise ValueError(
      f"VAE params do not match the config: {len(missing)} missing"
      f" {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]},"
      f" {len(mismatched)} shape mismatches {mismatched[:5]}; re-run"
      " `python -m ilct_jax.models.convert_vae` for this checkpoint."
    )


def save_vae(
  path: str,
  vae: AutoencoderKL,
  params: PyTree,
  extra: dict[str, Any] | None = None,
) -> None:
  """Writes `config.json` + `params.npz` into directory `path` (see top).

  Args:
    path: output directory (created if needed).
    vae: the module whose architecture fields go into config.json.
    params: its params (nested dict of arrays).
    extra: JSON-ready provenance fields to store beside the architecture.
  """
  flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
  check_param_shapes(vae, flat)
  storage.makedirs(path)
  config = {"format": FORMAT, **config_dict(vae), **(extra or {})}
  storage.write_json(storage.join(path, CONFIG_FILE), config)
  storage.save_npz(storage.join(path, PARAMS_FILE), **flat)


def read_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json, flat params) of a VAE directory, with one-line errors."""
  fix = (
    "create it with `python -m ilct_jax.models.convert_vae --src "
    f"DIFFUSERS_VAE --out {path}`"
  )
  for name in (CONFIG_FILE, PARAMS_FILE):
    if not storage.isfile(storage.join(path, name)):
      raise FileNotFoundError(
        f"no {name} in VAE checkpoint directory {path!r}; {fix}"
      )
  config = storage.read_json(storage.join(path, CONFIG_FILE), "VAE config", fix)
  if not isinstance(config, dict) or config.get("format") != FORMAT:
    found = config.get("format") if isinstance(config, dict) else config
    raise ValueError(
      f"{path!r} has format {found!r}, expected {FORMAT!r}; re-run "
      "`python -m ilct_jax.models.convert_vae`."
    )
  flat = storage.load_npz(storage.join(path, PARAMS_FILE), "VAE weights", fix)
  return config, flat


def load_vae(
  path: str, dtype: Any = jnp.float32
) -> tuple[AutoencoderKL, PyTree]:
  """Reads a directory written by `save_vae` (or `convert_vae`).

  Args:
    path: directory (local or gs://) holding config.json and params.npz.
    dtype: computation dtype for the returned module.

  Returns:
    (module, params) with params a nested dict of float32 jax arrays.
  """
  config, flat = read_checkpoint(path)
  arch = {f: config[f] for f in ARCH_FIELDS}
  arch["block_out_channels"] = tuple(arch["block_out_channels"])
  vae = AutoencoderKL(**arch, dtype=dtype)
  check_param_shapes(vae, flat)
  params = traverse_util.unflatten_dict(flat, sep="/")
  return vae, jax.tree.map(jnp.asarray, params)
