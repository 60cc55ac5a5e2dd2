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

import shlex
import shutil
import subprocess
import sys

import pytest

from tests import chaos, cluster

STEPS = 16


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


def _namespaces_work() -> bool:
  """Whether this machine lets a test mount a small tmpfs of its own
  (an unprivileged user + mount namespace, `unshare -Urm`)."""
  probe = "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d"
  try:
    out = subprocess.run(
      ["unshare", "-Urm", "sh", "-c", probe], capture_output=True, timeout=30
    )
  except (FileNotFoundError, subprocess.TimeoutExpired):
    return False
  return out.returncode == 0


@pytest.mark.skipif(
  not _namespaces_work(),
  reason="making a small filesystem needs `unshare -Urm` (user and mount "
  "namespaces), which this machine does not allow",
)
def test_a_full_disk_stops_with_73_keeps_the_checkpoint_and_resumes(
  reference, tmp_path
):
  """The run's disk (a 64 MiB tmpfs of the test) fills up after step 5
  (another writer takes every free byte): the next write (the step's
  TensorBoard events or the save of step 8, whichever comes first) fails;
  the run stops with one line and exit 73; checkpoint 4 is intact; after
  the space is freed, the same command resumes from step 4 and ends equal
  to the uninterrupted run."""
  mnt, out = tmp_path / "mnt", tmp_path / "out"
  mnt.mkdir()
  out.mkdir()
  env = cluster.env(4, ILCT_TEST_STEP_SLEEP="0.3")
  run = [
    sys.executable,
    cluster.WORKER,
    *chaos.args(STEPS),
    f"--workdir={mnt}/run",
  ]
  script = "\n".join(
    [
      f"mount -t tmpfs -o size=64m tmpfs {mnt} || exit 90",
      f"ILCT_TEST_FILL_DISK=5:{mnt}/filler {shlex.join(run)} "
      f"> {out}/first.log 2>&1",
      f"echo $? > {out}/first.code",
      f"ls {mnt}/run/checkpoints > {out}/first.ls",
      f"cp -r {mnt}/run/checkpoints/4 {out}/checkpoint_4",
      f"rm {mnt}/filler",
      f"{shlex.join(run)} > {out}/second.log 2>&1",
      f"echo $? > {out}/second.code",
      f"cp -r {mnt}/run {out}/run",
    ]
  )
  subprocess.run(
    ["unshare", "-Urm", "bash", "-c", script], env=env, timeout=400, check=True
  )
  first = (out / "first.log").read_text()
  assert (out / "first.code").read_text().strip() == "73", first[-3000:]
  errors = [line for line in first.splitlines() if "] error: " in line]
  assert len(errors) == 1, errors
  line = errors[0].split("] ", 1)[1]
  assert line.startswith(
    f"error: the disk is full (No space left on device) under {mnt}/run ("
  ), line
  assert line.endswith(
    "); the last good checkpoint is untouched: free space and run the same "
    "command again to resume"
  ), line
  print(line)
  listed = (out / "first.ls").read_text().split()
  assert "4" in listed and "8" not in listed, listed
  second = (out / "second.log").read_text()
  assert (out / "second.code").read_text().strip() == "0", second[-3000:]
  assert "Restored checkpoint step 4 from" in second
  assert chaos._same_final_state(str(out / "run"), reference, STEPS)
  # The checkpoint the full disk left alone is the one the run resumed from:
  # bit-equal to step 4 of the finished run (keep=3 dropped it there).
  (out / "checkpoints").mkdir()
  (out / "checkpoint_4").rename(out / "checkpoints" / "4")
  shutil.copy(out / "run" / "config.json", out / "config.json")
  from ilct_jax import runs

  kept = runs.load_run(str(out), what="state")
  assert kept.step == 4
