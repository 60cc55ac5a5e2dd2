"""What stops a run besides a bug, in one line and an exit code.

A wrapper (launch/tpu_run.sh, a SLURM requeue, a user's loop) tells these
apart by the exit code (sysexits.h):

  0   done (also for a run that was already complete)
  75  preempted: a checkpoint was saved; run the same command again
      (`preemption.EXIT_PREEMPTED`)
  73  disk full: nothing of the last good checkpoint was touched; free
      space, then run the same command again (it resumes)
  74  storage unreachable: the object store kept failing after the
      retries (`storage.py` says whose retries and how many)
  65  bad data: a latent record is damaged (the line names the file and
      the record); re-encode it or set data.bad_records=skip
  1   anything else: a crash, with its traceback

`classify(error, workdir)` maps an exception (its cause chain included, so
an orbax or tensorstore error that wraps an ENOSPC counts) to a `Fault` with
its code and line; `main` logs the line and exits with the code.
`is_transient(error)` says an error is about the disk, the store or a peer
process rather than the files read (a restore that fails so must not call
a good checkpoint damaged). `exit_on_early_sigterm` makes a SIGTERM before
training starts exit 75 too.
"""

import dataclasses
import errno
import os
import re
import signal
import sys

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (preemption.py)
EXIT_BAD_DATA = 65  # EX_DATAERR
EXIT_DISK_FULL = 73  # EX_CANTCREAT
EXIT_STORAGE = 74  # EX_IOERR

_DISK_FULL = ("no space left on device", "enospc", "disk quota exceeded")
_UNREACHABLE = (
  "service unavailable",
  " 503",
  "connection refused",
  "connection reset",
  "unavailable:",
  "deadline_exceeded",
  "deadline exceeded",
  "serverdisconnected",
  "cannot connect to host",
)


# A peer process or the cluster failed: nothing is wrong with the files.
_CLUSTER = (
  "connection closed by peer",
  "gloo",
  "coordination service",
  "barrier timed out",
  "heartbeat",
)


def exit_on_early_sigterm() -> None:
  """Until the train loop's watcher takes over (preemption.Watcher), a
  SIGTERM (during the imports, the cluster start or the config checks:
  nothing trained, nothing to save) exits at once with EXIT_PREEMPTED, so a
  wrapper reads 75 whenever the signal came. Standard library only: the
  programs install it before importing JAX."""

  def handler(signum, frame):
    del signum, frame
    sys.stderr.write("SIGTERM before training started: exiting (exit 75)\n")
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED)

  signal.signal(signal.SIGTERM, handler)


class BadRecordError(ValueError):
  """A latent record that must not be trained on (the message names it)."""


class StorageUnreachableError(OSError):
  """The object store kept failing after every retry."""


@dataclasses.dataclass(frozen=True)
class Fault:
  code: int
  line: str


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  if not text:
    return type(error).__name__
  return text[0].split(" [tensorstore_spec=")[0][:300]


def is_transient(error: BaseException) -> bool:
  """Whether `error` says nothing about the files read: a full disk, an
  unreachable store, or a failed peer process (a restore that fails so must
  not call a good checkpoint damaged)."""
  if classify(error) is not None:
    return True
  return any(any(s in str(e).lower() for s in _CLUSTER) for e in _chain(error))


def classify(error: BaseException, workdir: str = "") -> Fault | None:
  """The Fault of `error`, or None for a crash (keep the traceback)."""
  for e in _chain(error):
    if isinstance(e, BadRecordError):
      return Fault(EXIT_BAD_DATA, f"error: {_first_line(e)}")
  for e in _chain(error):
    text = str(e).lower()
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    if full or any(s in text for s in _DISK_FULL):
      paths = re.findall(r'"(/[^"]+)"', str(e))
      where = getattr(e, "filename", None) or (paths[-1] if paths else "")
      what = f"writing {where}" if where else f"{type(e).__name__}"
      return Fault(
        EXIT_DISK_FULL,
        f"error: the disk is full (No space left on device) under "
        f"{workdir or where} ({what}); the last good checkpoint is "
        "untouched: free space and run the same command again to resume",
      )
  for e in _chain(error):
    text = str(e).lower()
    if isinstance(e, StorageUnreachableError) or any(
      s in text for s in _UNREACHABLE
    ):
      return Fault(
        EXIT_STORAGE,
        f"error: storage unreachable under {workdir} after retries "
        f"({_first_line(e)}); the last good checkpoint is untouched: run the"
        " same command again when the store answers",
      )
  return None
