"""Weights & Biases beside TensorBoard (optional: `--config.log.wandb_project`).

`WandbWriter` takes the same calls as clu's metric writers (scalars, images,
texts, histograms, hparams), so `reporting.Writers` adds it to process 0's
writers and every figure the run logs to TensorBoard also goes to wandb at
the same step. The wandb run id is kept in WORKDIR/wandb_run_id: a resumed
run (after preemption, a restart) continues the same wandb run. wandb is
the `[wandb]` extra, imported only when a project is set; WANDB_MODE=offline
works as wandb documents (the tests use it).
"""

import os
import secrets
import string
from typing import Any

import ml_collections
import numpy as np

from ilct_jax import storage

RUN_ID_FILE = "wandb_run_id"


def enabled(config: ml_collections.ConfigDict | None) -> bool:
  return bool(config is not None and config.log.wandb_project)


def run_id(workdir: str) -> str:
  """The run's wandb id: read from the workdir, or made and written there."""
  path = storage.join(workdir, RUN_ID_FILE)
  if storage.exists(path):
    return storage.read_bytes(path).decode().strip()
  alphabet = string.ascii_lowercase + string.digits  # wandb's id letters.
  new = "".join(secrets.choice(alphabet) for _ in range(8))
  storage.write_text(path, new + "\n")
  return new


class WandbWriter:
  """clu-style writer that logs to one wandb run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    try:
      import wandb  # noqa: PLC0415
    except ImportError:
      raise ImportError(
        "log.wandb_project is set but wandb is not installed: pip install "
        "'ilct_jax[wandb]' (or set --config.log.wandb_project='')"
      ) from None
    self._wandb = wandb
    log = config.log
    local = workdir if "://" not in workdir else None
    self.run = wandb.init(
      project=log.wandb_project,
      entity=log.wandb_entity or None,
      name=log.wandb_name or os.path.basename(workdir.rstrip("/")),
      id=run_id(workdir),
      resume="allow",
      dir=os.environ.get("WANDB_DIR") or local,
    )

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    self.run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

  def write_images(self, step: int, images: dict[str, Any]) -> None:
    out = {}
    for k, v in images.items():
      a = np.asarray(v)
      out[k] = [self._wandb.Image(x) for x in (a if a.ndim == 4 else [a])]
    self.run.log(out, step=int(step))

  def write_texts(self, step: int, texts: dict[str, str]) -> None:
    self.run.log(dict(texts), step=int(step))

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    hists = {
      k: self._wandb.Histogram(np.asarray(v), num_bins=num_buckets or 64)
      for k, v in arrays.items()
    }
    self.run.log(hists, step=int(step))

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    self.run.config.update(dict(hparams), allow_val_change=True)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    self.run.finish()
