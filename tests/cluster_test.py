"""Real multi-process JAX: a 2-process cluster on 127.0.0.1, preemption, kill.

Every 2-process run here is two separate `python` processes (tests/cluster.py)
of the real program, on CPU devices of their own: 2 processes x 2 devices form
one 4-device JAX cluster (gloo collectives). It is compared with one process
on 4 devices: the same training function run in this pytest process on 4 of
its 8 CPU devices (a subprocess would only add its start-up; the exit code 75
of a preempted process is checked on the 2-process runs). The config is
configs/tiny.py with 24 steps (three curriculum stages, exact OT over the
global batch of 16) and a checkpoint every 8 steps.
"""

import glob
import os
import signal

import chex
import jax
import numpy as np
import pytest

from ilct_jax import parallel, preemption, train
from ilct_jax import runs as runs_lib
from tests import chaos, cli_config
from tests.cluster import Cluster

STEPS = 24
ARGS = [
  "--config=configs/tiny.py",
  f"--config.train.num_steps={STEPS}",
  "--config.train.ckpt_every=8",
  # Overrides that --mode=sample must read back from config.json.
  "--config.ema.decays=(0.9,0.95)",
  "--config.sample.ema_decay=0.95",
]


def _losses(workdir) -> dict[int, float]:
  """step -> loss from process 0's TensorBoard events."""
  import tensorflow as tf

  out = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == "loss":
          out[event.step] = float(tf.make_ndarray(v.tensor))
  return out


def _params(workdir, step=None):
  run = runs_lib.load_run(str(workdir), step=step, what="params")
  return run.step, jax.device_get(run.params)


def _steps(workdir) -> list[int]:
  return sorted(
    int(d)
    for d in os.listdir(os.path.join(workdir, "checkpoints"))
    if d.isdigit()
  )


def _reached(progress: str, step: int, processes: int) -> bool:
  """Whether every process's progress file says `step` or later."""
  for i in range(processes):
    try:
      with open(f"{progress}.{i}") as f:
        if int(f.read() or 0) < step:
          return False
    except FileNotFoundError:
      return False
  return True


def _train_one_process(workdir) -> None:
  """ilct_jax.main's training with ARGS, here, on 4 devices."""
  mesh = parallel.make_mesh(jax.devices()[:4])
  train.train_and_evaluate(cli_config.parse(ARGS), str(workdir), mesh=mesh)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Uninterrupted reference runs: 1 x 4 devices and 2 x 2 devices."""
  root = tmp_path_factory.mktemp("cluster")
  two = Cluster(root, "two", processes=2, devices=2)
  try:
    two.start([*ARGS, f"--workdir={root / 'two'}"])
    _train_one_process(root / "one")  # While the cluster runs.
    assert two.wait() == [0, 0], two.output()
    output = two.output()
  finally:
    two.close()
  return {
    "root": root,
    "one": root / "one",
    "two": root / "two",
    "output": output,
  }


def test_only_process_0_imports_tensorflow(runs):
  """Process 0 writes the TensorBoard events (clu, TensorFlow); process 1
  logs to its console only and never imports TensorFlow."""
  out = runs["output"]
  assert "[worker 1] tensorflow imported: False" in out, out[-3000:]
  assert "[worker 0] tensorflow imported: True" in out, out[-3000:]


def test_two_processes_agree_with_one_process(runs):
  one, two = _losses(runs["one"]), _losses(runs["two"])
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  # Same data, noise, pairing and program on 4 devices; only where the
  # gradient all-reduce runs differs (in-process vs gloo across processes).
  # Summation order can move the last float32 bits, and 24 updates can
  # amplify that, so the tolerance is relative 1e-5 (measured on the 2-core
  # machine: losses within 1.4e-7 relative, parameters within 7.5e-9 of
  # values up to 0.33, 16 of 58 arrays bit-identical).
  np.testing.assert_allclose(
    [two[k] for k in sorted(two)], [one[k] for k in sorted(one)], rtol=1e-5
  )
  step_one, p_one = _params(runs["one"])
  step_two, p_two = _params(runs["two"])
  assert step_one == step_two == STEPS
  chex.assert_trees_all_close(p_two, p_one, rtol=1e-5, atol=1e-6)
  assert _steps(runs["two"]) == [8, 16, 24]


def test_two_processes_killed_and_terminated_until_done(runs, tmp_path):
  """tests/chaos.py on the 2-process cluster (issue: faults at scale): a
  seeded schedule of SIGKILLs and SIGTERMs to both processes or to one
  (a SIGTERM to one stops both at the same step through JAX's preemption
  sync point, exit 75; a SIGKILL of one leaves the other to be torn down),
  restarted after each; the final TrainState equals the uninterrupted
  2-process run's bit for bit and no good checkpoint is moved aside."""
  assert chaos.args(STEPS)[1:] == [  # The reference's own program.
    f"--config.train.num_steps={STEPS}",
    f"--config.train.ckpt_every={chaos.CKPT_EVERY}",
    "--config.train.keep=3",
    ARGS[3],
  ]
  lines = []
  figures, attempts = chaos.run(
    str(tmp_path),
    2,
    3,
    seed=4,
    steps=STEPS,
    reference=str(runs["two"]),
    log=lines.append,
  )
  print("\n".join(lines))
  faults = [a.fault for a in attempts[:-1]]
  assert any(f.startswith("KILL") for f in faults), faults
  assert any(f.startswith("TERM") for f in faults), faults
  assert any(f.endswith(("to 0", "to 1")) for f in faults), faults
  assert figures["interruptions"] == 3 and figures["equal"]
  assert figures["moved_aside"] == 0
  for a in attempts[:-1]:  # Every interrupted attempt ends both processes.
    assert len(a.codes) == 2 and 0 not in a.codes, a
    if a.fault.startswith("TERM") and a.fault.endswith("to all"):
      assert a.codes == [75, 75], a


def test_single_process_sigterm_saves_and_a_finished_run_exits_at_once(
  runs, tmp_path, monkeypatch
):
  """SIGTERM to this process after step 3: a checkpoint at step 3 (not a
  periodic save) and Preempted; the same call again resumes there and ends
  equal to the uninterrupted run; a finished run returns without a step."""
  workdir = str(tmp_path / "run")
  real_compile = train.compile_step
  steps_run = []
  handler = signal.getsignal(signal.SIGTERM)

  def compile_step(*args, **kwargs):
    fn = real_compile(*args, **kwargs)

    def step(state, batch):
      state, metrics = fn(state, batch)
      steps_run.append(int(jax.device_get(state.step)))
      if steps_run[-1] == 3:
        assert signal.getsignal(signal.SIGTERM) != handler  # The run's.
        os.kill(os.getpid(), signal.SIGTERM)
      return state, metrics

    return step

  monkeypatch.setattr(train, "compile_step", compile_step)
  with pytest.raises(preemption.Preempted, match="saved at step 3"):
    _train_one_process(workdir)
  assert _steps(workdir) == [3] and steps_run == [1, 2, 3]
  assert signal.getsignal(signal.SIGTERM) == handler  # Put back.

  steps_run.clear()
  _train_one_process(workdir)
  assert steps_run == list(range(4, STEPS + 1))  # Resumed at step 3.
  _, params = _params(workdir)
  _, reference = _params(runs["one"])
  chex.assert_trees_all_equal(params, reference)

  steps_run.clear()  # The finished reference run: nothing compiles or runs.
  monkeypatch.setattr(train, "compile_step", None)
  _train_one_process(runs["one"])
  assert steps_run == []


def test_two_process_sample_mode_reads_config_json(runs, tmp_path):
  """--mode=sample with only --workdir on a run trained with overrides."""
  two = Cluster(tmp_path, "sample", processes=2, devices=2)
  try:
    two.start(["--mode=sample", f"--workdir={runs['two']}"])
    assert two.wait() == [0, 0], two.output()
  finally:
    two.close()
  pngs = sorted(glob.glob(os.path.join(runs["two"], "samples", "*_step24_*")))
  names = [os.path.basename(p) for p in pngs]
  assert names == [
    "onestep_step24_ema0.95.npz",
    "onestep_step24_ema0.95.png",
    "twostep_step24_ema0.95.npz",
    "twostep_step24_ema0.95.png",
  ]
