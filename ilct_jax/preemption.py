"""Preemption: a SIGTERM ends a run with a checkpoint at the current step.

Cloud TPU maintenance, spot reclaims, SLURM (`scancel`, `--signal=TERM@...`,
the time limit) and `kill` all send SIGTERM. The loop asks `Watcher` after
every step; once it says stop, the loop saves a checkpoint at that step, waits
for it, and the process exits with EXIT_PREEMPTED, which a wrapper can tell
from 0 (finished). Running the same command again resumes from that step, so
no step is lost.

Single process: a Python SIGTERM handler sets a flag (a repeated SIGTERM, as
SLURM may send, is harmless). Several processes: `jax.distributed.initialize`
installs JAX's own preemption notifier, and
`multihost_utils.reached_preemption_sync_point` returns True on every process
at the same step, whichever process got the signal; a Python handler would
replace JAX's, so none is installed then.
"""

import signal
import threading

import jax
from absl import logging

from ilct_jax import faults

# sysexits.h EX_TEMPFAIL ("temporary failure; the user is invited to retry").
EXIT_PREEMPTED = faults.EXIT_PREEMPTED


class Preempted(Exception):
  """The run stopped on request after saving a checkpoint at `step`."""

  def __init__(self, step: int):
    super().__init__(
      f"preempted: checkpoint saved at step {step}; run the same command "
      "again to resume"
    )
    self.step = step


def _jax_sync_point(step: int) -> bool | None:
  """JAX's cross-process answer, or None when no cluster notifier runs."""
  if jax.process_count() == 1:
    return None
  from jax.experimental import multihost_utils

  try:
    return bool(multihost_utils.reached_preemption_sync_point(step))
  except RuntimeError:  # Initialised without the preemption service.
    return None


class Watcher:
  """Says, at a step every process agrees on, that the run should stop."""

  def __init__(self):
    self._requested = threading.Event()
    self._previous = None
    self._multi = jax.process_count() > 1
    self._calls = 0
    if self._multi:
      return  # JAX's notifier owns SIGTERM (see the module docstring).
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Not on the main thread: SIGTERM is not handled")
      return
    self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    del signum, frame
    if not self._requested.is_set():
      logging.warning("SIGTERM: saving a checkpoint after this step")
    self._requested.set()

  def request(self) -> None:
    """Asks for a stop (as a SIGTERM would), e.g. from a time limit."""
    self._requested.set()

  def __call__(self, step: int) -> bool:
    """Whether to stop after `step` (the same answer on every process).

    JAX's protocol takes the largest id any process has passed so far, plus
    one, as the step to stop at; a notice that came before the first call
    (during the restore or the compile of a resumed run) met no id yet, so
    its stop step was 1 and a run resumed at step 5 never reached it (found
    by tests/chaos.py). The ids passed are therefore this start's own count
    of steps, 1, 2, ...: every process restored the same step, so the counts
    agree, and the stop lands on the first step.
    """
    if self._multi:
      self._calls += 1
      agreed = _jax_sync_point(self._calls)
      if agreed is not None:
        return agreed
    return self._requested.is_set()

  def close(self) -> None:
    """Puts back the SIGTERM handler that was there before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
