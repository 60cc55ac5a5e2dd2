"""Kill until done: a run restarted after every fault of a seeded schedule.

  python -m tests.chaos --processes=1 --interruptions=12 --seed=0
  python -m tests.chaos --processes=2 --interruptions=6 --seed=0

runs configs/tiny.py (STEPS steps, a checkpoint every CKPT_EVERY, async
saves) as real `ilct_jax.main` processes (tests/cluster.py: 1 process with 4
CPU devices, or 2 processes with 2 each, one JAX cluster). Each attempt gets
the next fault of the schedule: SIGKILL or SIGTERM

  step:K     after train step K (a step a little past the resumed one)
  save:K     while the async save of step K is in flight
  restore    as the restore of the newest checkpoint begins
  start      as the program starts (right after the restart)
  time:T     T seconds after the start, whatever it is doing then (sent
             by this driver from outside)

to every process or to one of them (2 processes; the other is then killed
by the driver after a short grace, as a job scheduler tears a job down, or
stops at the same step through JAX's preemption sync point after a SIGTERM).
After the schedule, a last attempt runs to the end. The final state (step,
parameters, every EMA, the optimizer's moments: the whole TrainState) must
equal, bit for bit, an uninterrupted run's. The schedule and the figures
(interruptions, steps redone, wall time) are printed; tests/faults_test.py
runs a short schedule, this command the long one.
"""

import argparse
import dataclasses
import os
import pathlib
import re
import signal
import sys
import tempfile
import time

import numpy as np

from tests.cluster import Cluster

STEPS, CKPT_EVERY = 40, 4


def args(steps: int) -> list[str]:
  """ilct_jax.main's flags of the run (without --workdir)."""
  return [
    "--config=configs/tiny.py",
    f"--config.train.num_steps={steps}",
    f"--config.train.ckpt_every={CKPT_EVERY}",
    "--config.train.keep=3",
    "--config.ema.decays=(0.9,0.95)",  # As tests/cluster_test.py's runs.
  ]


MOMENTS = ("step", "save", "restore", "start", "time")


@dataclasses.dataclass
class Attempt:
  fault: str  # e.g. "KILL at save:8 to all", or "none".
  on_disk: int  # The newest checkpoint step when it started.
  resumed_from: int | None  # The step it restored (None: none restored).
  reached: int  # The last train step it finished.
  codes: list[int]  # Exit codes (negative: killed by that signal).
  seconds: float


def _latest(workdir: str) -> int:
  d = os.path.join(workdir, "checkpoints")
  steps = (
    [int(s) for s in os.listdir(d) if s.isdigit()] if os.path.isdir(d) else []
  )
  return max(steps, default=0)


def _draw(rng, kind, sig, latest, processes, steps) -> tuple[str, str, str]:
  """(moment, signal, target processes) for one fault, given the newest
  checkpoint on disk (moments that cannot happen fall back to `step`)."""
  who = "all" if processes == 1 else str(rng.choice(["all", "0", "1"]))
  first = latest + 1
  if kind == "save":
    k = (latest // CKPT_EVERY + 1) * CKPT_EVERY
    if k < steps:
      return f"save:{k}", sig, who
    kind = "step"
  if kind == "restore" and latest == 0:
    kind = "start"
  if kind == "time":
    return f"time:{rng.uniform(1.0, 6.0):.2f}", sig, who
  if kind == "step":
    return f"step:{min(first + int(rng.integers(0, 5)), steps - 1)}", sig, who
  return kind, sig, who


def _reached(progress: str, processes: int) -> int:
  out = []
  for i in range(processes):
    try:
      with open(f"{progress}.{i}") as f:
        out.append(int(f.read() or 0))
    except (FileNotFoundError, ValueError):
      out.append(0)
  return min(out)


def _attempt(root, name, workdir, processes, steps, env, external=None):
  """One start of the run; returns (exit codes, seconds)."""
  cluster = Cluster(pathlib.Path(root), name, processes, 4 // processes)
  env = dict(env)
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    env.setdefault(  # Restarts compile once (tests pass their own cache).
      "JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jax_cache")
    )
  begin = time.monotonic()
  try:
    cluster.start([*args(steps), f"--workdir={workdir}"], timeout=300, **env)
    if external is not None:
      delay, sig, who = external
      end = begin + delay
      while time.monotonic() < end and all(
        p.poll() is None for p in cluster.procs
      ):
        time.sleep(0.05)
      for i, p in enumerate(cluster.procs):
        if p.poll() is None and who in ("all", str(i)):
          os.killpg(p.pid, getattr(signal, f"SIG{sig}"))
    # One process gone (killed) leaves the other waiting in a collective:
    # after a grace, tear the job down as a scheduler does.
    while all(p.poll() is None for p in cluster.procs):
      if time.monotonic() > cluster.deadline:
        raise AssertionError(f"attempt {name} hung:\n{cluster.output()}")
      time.sleep(0.05)
    # A SIGTERMed process saves first; a killed peer leaves nothing to wait
    # for (JAX's coordination service would end the other in minutes).
    killed = any((p.poll() or 0) < 0 for p in cluster.procs)
    grace = time.monotonic() + (3 if killed else 10)
    while (
      any(p.poll() is None for p in cluster.procs) and time.monotonic() < grace
    ):
      time.sleep(0.05)
    codes = [p.poll() for p in cluster.procs]
    codes = [c if c is not None else -9 for c in codes]
    cluster.kill()
    output = "\n".join(
      f.read_text() for f in sorted(cluster.log_dir.glob("*.log"))
    )
  finally:
    cluster.close()
  return codes, time.monotonic() - begin, output


def run(
  root: str,
  processes: int,
  interruptions: int,
  seed: int,
  steps: int = STEPS,
  reference: str = "",
  log=print,
):
  """Runs the schedule, then compares with an uninterrupted run (in
  `reference`, a finished run of `args(steps)` on 4 devices; default: run
  one here).

  Returns (figures, attempts); raises AssertionError on a mismatch.
  """
  rng = np.random.default_rng(seed)
  kinds = list(MOMENTS) * (interruptions // len(MOMENTS) + 1)
  kinds = [str(k) for k in rng.permutation(kinds[:interruptions])]
  if interruptions >= len(MOMENTS):  # Every moment at least once.
    kinds = [str(k) for k in rng.permutation(list(MOMENTS))] + kinds[5:]
  sigs = ["KILL", "TERM"] * (interruptions // 2 + 1)
  sigs = [str(x) for x in rng.permutation(sigs[:interruptions])]
  workdir = os.path.join(root, "chaos")
  progress = os.path.join(root, "progress")
  events = os.path.join(root, "events")
  attempts: list[Attempt] = []
  began = time.monotonic()
  for i, sig in enumerate([*sigs, None]):
    resumed = _latest(workdir)
    kind = None
    if sig is not None:  # A restore needs a checkpoint: postpone it.
      ok = [k for k in kinds if k != "restore" or resumed > 0]
      kind = (ok or kinds)[0]
      kinds.remove(kind)
    for j in range(processes):
      if os.path.exists(f"{progress}.{j}"):
        os.remove(f"{progress}.{j}")
    env = {"ILCT_TEST_PROGRESS": progress, "ILCT_TEST_EVENTS": events}
    env["ILCT_TEST_STEP_SLEEP"] = "0.05"
    external, fault = None, "none"
    if kind is not None:
      moment, sig, who = _draw(rng, kind, sig, resumed, processes, steps)
      fault = f"{sig} at {moment} to {who}"
      if moment.startswith("time:"):
        external = (float(moment[5:]), sig, who)
      else:
        env["ILCT_TEST_FAULT"] = f"{moment}:{sig}"
        if who != "all":
          env["ILCT_TEST_FAULT_PROCESSES"] = who
    codes, seconds, output = _attempt(
      root, f"a{i}", workdir, processes, steps, env, external
    )
    restored = re.findall(r"Restored checkpoint step (\d+)", output)
    attempt = Attempt(
      fault,
      resumed,
      int(restored[0]) if restored else None,
      _reached(progress, processes),
      codes,
      seconds,
    )
    attempts.append(attempt)
    fired = []
    for j in range(processes):
      if os.path.exists(f"{events}.{j}"):
        with open(f"{events}.{j}") as f:
          fired += [f"p{j} {line.strip()}" for line in f]
        os.remove(f"{events}.{j}")
    log(
      f"attempt {i:2d}: {fault:24s} {'; '.join(fired)[:40]:40s} "
      f"resumed {attempt.resumed_from!s:>4}, "
      f"reached {attempt.reached:3d}, exit {codes}, {seconds:.1f} s"
    )
    if kind is None:
      assert codes == [0] * processes, output
  chaos_seconds = time.monotonic() - began
  ref, ref_seconds = reference, float("nan")
  if not ref:
    ref = os.path.join(root, "reference")
    codes, ref_seconds, output = _attempt(
      root, "ref", ref, processes, steps, {}
    )
    assert codes == [0] * processes, output
  trained = sum(max(0, a.reached - a.on_disk) for a in attempts)
  redone = trained - steps  # Steps trained more than once.
  interrupted = sum(1 for a in attempts[:-1] if a.codes != [0] * processes)
  damaged = os.path.join(workdir, "damaged_checkpoints")
  moved = sorted(os.listdir(damaged)) if os.path.isdir(damaged) else []
  assert not moved, f"good checkpoints were moved aside: {moved}"
  equal = _same_final_state(workdir, ref, steps)
  figures = {
    "processes": processes,
    "faults": len(sigs),
    "interruptions": interrupted,
    "steps": steps,
    "steps_redone": redone,
    "moved_aside": len(moved),
    "seconds": round(chaos_seconds, 1),
    "uninterrupted_seconds": round(ref_seconds, 1),
    "equal": equal,
  }
  log(
    f"{processes} process(es): {interrupted} interruptions of {len(sigs)} "
    f"faults, {redone} of {steps} steps redone, {chaos_seconds:.0f} s "
    f"(uninterrupted {ref_seconds:.0f} s); final TrainState bit-equal to "
    f"the uninterrupted run's: {equal}"
  )
  return figures, attempts


def _same_final_state(workdir: str, reference: str, steps: int) -> bool:
  import chex
  import jax

  from ilct_jax import runs

  a = runs.load_run(workdir, what="state")
  b = runs.load_run(reference, what="state")
  assert a.step == b.step == steps, (a.step, b.step)
  chex.assert_trees_all_equal(jax.device_get(a.state), jax.device_get(b.state))
  return True


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--processes", type=int, default=1, choices=(1, 2))
  parser.add_argument("--interruptions", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=STEPS)
  parser.add_argument("--workdir", default="")
  flags = parser.parse_args()
  root = flags.workdir or tempfile.mkdtemp(prefix="ilct_chaos_")
  os.makedirs(root, exist_ok=True)
  print(f"workdir {root}", flush=True)
  run(
    root,
    flags.processes,
    flags.interruptions,
    flags.seed,
    flags.steps,
    log=lambda s: print(s, flush=True),
  )


if __name__ == "__main__":
  sys.exit(main())
