"""Every progress line of the project, and its ETA format.

`Progress`: long host loops (latent encoding, FID sampling), one
rate-limited line "LABEL: done/total UNIT (pct%), rate UNIT/s, ETA 3m07s",
at most every `every_s` seconds and always at the end. `train_progress`:
the train loop's (steps/s and ETA over training time only, the time of
sample grids, checkpoints and FID taken out; clu's periodic action,
imported lazily because clu imports TensorFlow). Both use `format_eta`.
"""

import contextlib
import time
from typing import Any

import jax
from absl import logging


class Progress:
  """Counts finished items of a known total and logs rate and ETA.

  Attributes:
    total: items to do (this process's share or the global count).
    label: the line's prefix, e.g. "encode celeb_a_hq" or "FID features".
    unit: what is counted ("examples", "images").
    every_s: seconds between lines.
    all_processes: log on every process (each counting its own share);
      False logs on process 0 only.
  """

  def __init__(
    self,
    total: int,
    label: str,
    unit: str = "examples",
    every_s: float = 30.0,
    all_processes: bool = True,
  ):
    self.total, self.label, self.unit = total, label, unit
    self.every_s, self.all_processes = every_s, all_processes
    self.done = 0
    self.start = self.last = time.perf_counter()

  def update(self, n: int) -> None:
    """Adds `n` finished items; logs when due (or when all are done)."""
    self.done += n
    now = time.perf_counter()
    if not self.all_processes and jax.process_index() > 0:
      return
    if now - self.last < self.every_s and self.done < self.total:
      return
    self.last = now
    rate = self.done / max(now - self.start, 1e-9)
    eta = (self.total - self.done) / max(rate, 1e-9)
    logging.info(
      "%s: %d/%d %s (%.1f%%), %.1f %s/s, ETA %s",
      self.label,
      self.done,
      self.total,
      self.unit,
      100.0 * self.done / max(self.total, 1),
      rate,
      self.unit,
      format_eta(eta),
    )


def _progress_class():
  from clu import periodic_actions  # Lazy: imports TensorFlow.

  class TrainProgress(periodic_actions.ReportProgress):
    """clu's ReportProgress with rate and ETA over training time only.

    Time spent in `timed(...)` blocks (sample grids, checkpoints, FID) is
    taken out of the interval before the rate is computed, so the ETA does
    not jump after each of them.
    """

    def __init__(self, *, batch_size: int, **kwargs):
      super().__init__(**kwargs)
      self._batch = batch_size
      self._excluded = 0.0

    def _apply(self, step: int, t: float):
      excluded = sum(self._time_per_part.values())
      train_time = (t - self._previous_time) - (excluded - self._excluded)
      self._excluded = excluded
      rate = (step - self._previous_step) / max(train_time, 1e-9)
      message = f"step {step}: {rate:.2f} steps/s"
      if self._num_train_steps:
        eta = (self._num_train_steps - step) / max(rate, 1e-9)
        message += (
          f", {100 * step / self._num_train_steps:.1f}% of "
          f"{self._num_train_steps}, ETA {format_eta(eta)}"
        )
      if self._time_per_part:
        parts = ", ".join(
          f"{name} {dt:.0f}s"
          for name, dt in sorted(self._time_per_part.items())
        )
        message += f" (outside training: {parts})"
      logging.info("%s", message)
      if self._writer is not None:
        self._writer.write_scalars(
          step,
          {
            "steps_per_sec": rate,
            "images_per_sec": rate * self._batch,
            "uptime": time.monotonic() - self._t0,
          },
        )

  return TrainProgress


class _Silent:
  """Progress of the processes other than 0: process 0 reports it."""

  def __call__(self, step: int) -> bool:
    del step
    return False

  def timed(self, name: str, wait_jax_async_dispatch: bool = True):
    del name, wait_jax_async_dispatch
    return contextlib.nullcontext()


def train_progress(num_steps: int, batch_size: int, writer: Any):
  """The train loop's progress reporter (every 60 s and at the last step),
  on process 0 only; `writer` gets steps/s, images/s and uptime."""
  if jax.process_index() != 0:
    return _Silent()
  return _progress_class()(
    num_train_steps=num_steps, writer=writer, batch_size=batch_size
  )


def format_eta(seconds: float) -> str:
  seconds = int(seconds)
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f"{days}d{hours:02d}h{minutes:02d}m"
  return (
    f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
  )
