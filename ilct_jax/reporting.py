"""What a training run reports: TensorBoard and the console.

Process 0 writes TensorBoard event files into the workdir (clu's
SummaryWriter: TensorFlow, imported lazily) and the console; every other
process logs scalars to the console through `ConsoleWriter` (and reports no
progress: progress.py), so it never imports clu's writers or TensorFlow.
Per log step: the step's scalars averaged over the window, one
`steps_per_sec` series and `images_per_sec`, and histograms of the
per-sample TD residual RMS by noise level (the per-sample values come out of
the jitted step). Once: the config as hparams (a readable multi-line block
on the console, not one long line), a parameter overview, the step's compile
time and memory. The progress lines and their ETA are progress.py's.
"""

import json
import os
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ilct_jax import wandb_writer

PER_SAMPLE = "per_sample/"  # Step metrics of shape [B] (not averaged).
# Step metrics that are states, not rates: the window's last value is shown.
LAST_VALUE = ("nonfinite", "num_scales", "c", "lr")
# Noise-level bins of the residual histograms (edges; sigma in [0.002, 80]).
SIGMA_EDGES = (0.002, 0.01, 0.1, 1.0, 10.0, 80.0001)


def quiet_tensorflow() -> None:
  """Silences TensorFlow's start-up lines (set before it is imported)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # oneDNN's notice comes through absl C++ logging, which the variable above
  # does not reach; TensorFlow only writes summaries and reads datasets here.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _hide_accelerators_from_tensorflow() -> None:
  import tensorflow as tf  # Lazy: only the summary writer needs it.

  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except (RuntimeError, ValueError):  # Already initialised / no such kind.
      pass


class Writers:
  """The run's metric writers: `all` (TensorBoard + console) and `summary`.

  `summary` (process 0's TensorBoard writer, else None) gets what would be
  unreadable on the console, such as the flattened config.
  """

  def __init__(self, logdir: str, config=None):
    self.summary = None
    if jax.process_index() != 0:  # No TensorFlow on the other processes.
      self.all = ConsoleWriter()
      return
    quiet_tensorflow()
    from clu import metric_writers  # Lazy: imports TensorFlow.

    _hide_accelerators_from_tensorflow()
    self.summary = metric_writers.SummaryWriter(logdir)
    writers = [self.summary, metric_writers.LoggingWriter()]
    if wandb_writer.enabled(config):  # Beside TensorBoard, same figures.
      writers.append(wandb_writer.WandbWriter(config, logdir))
    self.all = metric_writers.MultiWriter(writers)

  def hparams(self, config: ml_collections.ConfigDict) -> None:
    flat = flat_hparams(config)
    if self.summary is not None:
      self.summary.write_hparams(flat)
    lines = [f"  {k} = {v}" for k, v in sorted(flat.items())]
    logging.info("Config:\n%s", "\n".join(lines))

  def flush(self) -> None:
    self.all.flush()

  def close(self) -> None:
    self.all.close()


class ConsoleWriter:
  """The writer of processes other than 0: scalars to the console (absl
  logging, as clu's LoggingWriter), everything else dropped (process 0
  writes it to TensorBoard)."""

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    values = ", ".join(
      f"{k}={float(v):.6g}" for k, v in sorted(scalars.items())
    )
    logging.info("[%d] %s", step, values)

  def write_images(self, step, images) -> None:
    del step, images

  def write_texts(self, step, texts) -> None:
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None) -> None:
    del step, arrays, num_buckets

  def write_hparams(self, hparams) -> None:
    del hparams

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config flattened to scalar hparams (dotted names)."""
  out = {}

  def walk(prefix: str, node: Any) -> None:
    for k, v in node.items():
      key = f"{prefix}{k}"
      if isinstance(v, ml_collections.ConfigDict):
        walk(key + ".", v)
      elif isinstance(v, (int, float, str, bool)):
        out[key] = v
      else:
        out[key] = json.dumps(list(v)) if isinstance(v, tuple) else str(v)

  walk("", config)
  return out


def parameter_overview(params: Any) -> str:
  """clu's table of parameter shapes and counts (and the total)."""
  from clu import parameter_overview as overview  # No TensorFlow needed.

  return overview.get_parameter_overview(params, include_stats=False)


def residual_histograms(
  td_rms: np.ndarray, sigma: np.ndarray
) -> dict[str, np.ndarray]:
  """{"td_rms/sigma_lo-hi": values} of the samples whose sigma is in a bin."""
  out = {}
  for lo, hi in zip(SIGMA_EDGES[:-1], SIGMA_EDGES[1:]):
    sel = (sigma >= lo) & (sigma < hi)
    if np.any(sel):
      out[f"td_rms/sigma_{lo:g}-{min(hi, 80):g}"] = td_rms[sel]
  return out


def write_window(
  writers: Writers, step: int, history: Iterable[dict[str, Any]]
) -> dict[str, float]:
  """Writes the scalars (window means) and residual histograms of a window.

  Returns:
    The scalars written (means over the window; the states of LAST_VALUE,
    such as the running `nonfinite` count, at the window's last step).
  """
  fetched = jax.device_get(list(history))
  names = [k for k in fetched[0] if not k.startswith(PER_SAMPLE)]
  scalars = {k: float(np.mean([m[k] for m in fetched])) for k in names}
  scalars.update(
    {k: float(fetched[-1][k]) for k in LAST_VALUE if k in fetched[-1]}
  )
  writers.all.write_scalars(step, scalars)
  if f"{PER_SAMPLE}td_rms" in fetched[0]:
    cat = lambda k: np.concatenate(
      [np.ravel(m[PER_SAMPLE + k]) for m in fetched]
    )
    hists = residual_histograms(cat("td_rms"), cat("sigma"))
    if writers.summary is not None and hists:
      writers.summary.write_histograms(step, hists)
  return scalars


def make_profiler(train: ml_collections.ConfigDict, logdir: str):
  """clu's Profile for a window of `train.profile_steps` steps, or None."""
  if train.profile_steps <= 0 or jax.process_index() > 0:
    return None
  from clu import periodic_actions  # Lazy: imports TensorFlow.

  return periodic_actions.Profile(
    logdir=logdir,
    num_profile_steps=train.profile_steps,
    first_profile=train.profile_first_step,
    every_steps=None,
  )
