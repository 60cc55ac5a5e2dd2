"""Progress lines of long host loops (latent encoding, FID sampling).

One rate-limited line: "LABEL: done/total UNIT (pct%), rate UNIT/s, ETA
XmYYs", at most every `every_s` seconds and always at the end. The train
loop's own progress (steps/s, ETA over training time) is reporting.py's.
"""

import time

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
      "%s: %d/%d %s (%.1f%%), %.1f %s/s, ETA %dm%02ds",
      self.label,
      self.done,
      self.total,
      self.unit,
      100.0 * self.done / max(self.total, 1),
      rate,
      self.unit,
      *divmod(int(eta), 60),
    )
