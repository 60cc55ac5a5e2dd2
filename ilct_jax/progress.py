"""Every progress line of the project: one reporter, and its ETA format.

`Progress` counts work of a known total and logs, at most every `every_s`
seconds and always at the end, one line

  LABEL: done/total UNIT (pct%), rate UNIT/s, ETA 3m07s

Host loops (latent encoding, FID sampling) add finished items with
`update(n)`; the train loop reports its position with `progress(step)` and
wraps what is not training (sample grids, checkpoints, FID) in
`with progress.timed(name):`, so the rate and the ETA are over training time
only and do not jump after each of them; the line then ends with
"(outside training: checkpoints 12s, samples 3s)". With a `writer`, each
line also writes `steps_per_sec`, `images_per_sec` (with `batch_size`) and
`uptime` to it. `format_eta` is the one duration format.
"""

import contextlib
import time
from typing import Any

import jax
from absl import logging


class Progress:
  """Progress of `total` items, with rate and ETA.

  Attributes:
    total: items to do (this process's share or the global count).
    label: the line's prefix, e.g. "encode celeb_a_hq", "FID features".
    unit: what is counted ("examples", "images", "steps").
    every_s: seconds between lines.
    all_processes: log on every process (each counting its own share);
      False logs on process 0 only.
    writer: a metric writer (write_scalars) for the rate, or None.
    batch_size: examples per item, for `images_per_sec` (train loop).
  """

  def __init__(
    self,
    total: int,
    label: str,
    unit: str = "examples",
    every_s: float = 30.0,
    all_processes: bool = True,
    writer: Any = None,
    batch_size: int | None = None,
  ):
    self.total, self.label, self.unit = total, label, unit
    self.every_s, self.all_processes = every_s, all_processes
    self.writer, self.batch_size = writer, batch_size
    self.done = 0
    self.start = self.last = time.perf_counter()
    self._last_done = 0
    self._parts: dict[str, float] = {}  # Seconds outside the counted work.
    self._parts_at_last = 0.0
    self._anchored = False

  @property
  def _quiet(self) -> bool:
    return not self.all_processes and jax.process_index() > 0

  def update(self, n: int) -> None:
    """Adds `n` finished items; logs when due (or when all are done)."""
    self._report(self.done + n)

  def __call__(self, done: int) -> None:
    """The loop's position: `done` items are finished. The first call only
    sets the reference point, so the first item (a train step's compile)
    is not in any rate."""
    if not self._anchored:
      self._anchored = True
      self.done, self._last_done = done, done
      self.last = time.perf_counter()
      self._parts_at_last = sum(self._parts.values())
      return
    self._report(done)

  @contextlib.contextmanager
  def timed(self, name: str):
    """Time spent inside is taken out of the rate (and shown by name)."""
    begin = time.perf_counter()
    try:
      yield
    finally:
      self._parts[name] = (
        self._parts.get(name, 0.0) + time.perf_counter() - begin
      )

  def _report(self, done: int) -> None:
    self.done = done
    now = time.perf_counter()
    if self._quiet:
      return
    if now - self.last < self.every_s and done < self.total:
      return
    outside = sum(self._parts.values())
    seconds = (now - self.last) - (outside - self._parts_at_last)
    rate = (done - self._last_done) / max(seconds, 1e-9)
    self.last, self._last_done, self._parts_at_last = now, done, outside
    eta = (self.total - done) / max(rate, 1e-9)
    line = (
      f"{self.label}: {done}/{self.total} {self.unit} "
      f"({100.0 * done / max(self.total, 1):.1f}%), {_figure(rate)} "
      f"{self.unit}/s, ETA {format_eta(eta)}"
    )
    if self._parts:
      parts = ", ".join(f"{k} {v:.0f}s" for k, v in sorted(self._parts.items()))
      line += f" (outside training: {parts})"
    logging.info("%s", line)
    if self.writer is not None:
      scalars = {"steps_per_sec": rate, "uptime": now - self.start}
      if self.batch_size:
        scalars["images_per_sec"] = rate * self.batch_size
      self.writer.write_scalars(done, scalars)


def train_progress(num_steps: int, batch_size: int, writer: Any) -> Progress:
  """The train loop's reporter: every 60 s and at the last step, on process
  0 only; `writer` gets steps/s, images/s and uptime."""
  return Progress(
    num_steps,
    "train",
    "steps",
    every_s=60.0,
    all_processes=False,
    writer=writer,
    batch_size=batch_size,
  )


def _figure(x: float) -> str:
  return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


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
