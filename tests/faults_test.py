"""Kill until done (issue: faults at scale, item 1), a short seeded schedule.

tests/chaos.py runs configs/tiny.py as real `ilct_jax.main` processes and
interrupts it with a seeded schedule of SIGKILLs and SIGTERMs (after a step,
during an async save, as a restore begins, as the program starts, at a
random time), restarting after each; the final TrainState must equal an
uninterrupted run's bit for bit, and no good checkpoint may be moved aside.
CI runs 5 faults on 1 process here and 3 on a 2-process cluster in
tests/cluster_test.py; the long
schedules are `python -m tests.chaos --interruptions=12` (docs/RELIABILITY.md).
"""

import pytest

from tests import chaos

STEPS = 24


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run: the same program, 1 process on 4 CPU devices."""
  root = tmp_path_factory.mktemp("faults")
  workdir = str(root / "reference")
  codes, _, output = chaos._attempt(str(root), "ref", workdir, 1, STEPS, {})
  assert codes == [0], output
  return workdir


def test_one_process_killed_and_terminated_until_done(reference, tmp_path):
  lines = []
  figures, attempts = chaos.run(
    str(tmp_path),
    1,
    5,
    seed=0,
    steps=STEPS,
    reference=reference,
    log=lines.append,
  )
  print("\n".join(lines))
  faults = [a.fault for a in attempts[:-1]]
  for moment in ("step:", "save:", "restore", "start", "time:"):
    assert any(f" at {moment}" in f for f in faults), (moment, faults)
  assert {f.split()[0] for f in faults} == {"KILL", "TERM"}
  assert figures["interruptions"] == 5 and figures["equal"]
  assert figures["moved_aside"] == 0
  # A SIGTERM exits 75 wherever it lands; a SIGKILL is -9.
  for a in attempts[:-1]:
    assert a.codes == ([75] if a.fault.startswith("TERM") else [-9]), a
