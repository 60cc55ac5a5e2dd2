"""progress.Progress: the line's figures, rate limiting and the final line."""

import logging

from ilct_jax import progress


def test_progress_logs_when_due_and_at_the_end(caplog, monkeypatch):
  clock = iter([0.0, 10.0, 20.0, 40.0])  # start, then one per update.
  monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
  caplog.set_level(logging.INFO)
  p = progress.Progress(100, "encode x", "examples", every_s=15.0)
  p.update(25)  # t=10: not due.
  p.update(25)  # t=20: due -> 50/100 at 2.5/s, 20 s left.
  p.update(50)  # t=40: done -> always logged.
  lines = [
    r.getMessage() for r in caplog.records if "encode x" in r.getMessage()
  ]
  assert lines == [
    "encode x: 50/100 examples (50.0%), 2.5 examples/s, ETA 0m20s",
    "encode x: 100/100 examples (100.0%), 2.5 examples/s, ETA 0m00s",
  ]
