"""Launches real JAX programs as 1..N local processes for the cluster tests.

Each process is `python tests/cluster_worker.py ...` (ilct_jax.main plus test
hooks) with its own CPU devices (JAX_NUM_CPU_DEVICES); N > 1 processes form
one JAX cluster through a coordinator on 127.0.0.1. Every process runs in a
new session with a deadline, its output goes to a log file, and `Cluster`
kills whatever is left when the test ends: no process outlives its test.
"""

import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "cluster_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices: int, **extra: str) -> dict[str, str]:
  """Environment of a worker: CPU only, `devices` devices, shared cache.

  The compile cache and XLA options of this test session (conftest.py) are
  passed on, so a subprocess compiles a program this session already
  compiled only once.
  """
  import jax

  out = dict(os.environ)
  out.update(
    JAX_PLATFORMS="cpu",
    JAX_NUM_CPU_DEVICES=str(devices),
    JAX_DISABLE_MOST_OPTIMIZATIONS="true",
    JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    CUDA_VISIBLE_DEVICES="",
    TF_CPP_MIN_LOG_LEVEL="3",
    PYTHONPATH=REPO,
    PYTHONUNBUFFERED="1",
  )
  out.update(extra)
  return out


class Cluster:
  """N processes of one program (N = 1: a plain single-process run)."""

  def __init__(self, tmp_path, name: str, processes: int, devices: int):
    self.log_dir = tmp_path / f"logs_{name}"
    self.log_dir.mkdir(parents=True, exist_ok=True)
    self.processes, self.devices = processes, devices
    self.procs: list[subprocess.Popen] = []
    self._logs = []

  def start(self, args: list[str], timeout: float = 240, **extra_env: str):
    """Starts the processes with `args` (flags of ilct_jax.main or module)."""
    port = free_port()
    self.deadline = time.monotonic() + timeout
    for i in range(self.processes):
      cluster = []
      if self.processes > 1:
        cluster = [
          f"--coordinator_address=127.0.0.1:{port}",
          f"--num_processes={self.processes}",
          f"--process_id={i}",
        ]
      log = open(self.log_dir / f"p{i}_{len(self._logs)}.log", "w")
      self._logs.append(log)
      self.procs.append(
        subprocess.Popen(
          [sys.executable, WORKER, *args, *cluster],
          cwd=REPO,
          env=env(self.devices, **extra_env),
          stdout=log,
          stderr=subprocess.STDOUT,
          start_new_session=True,
        )
      )
    return self

  def wait(self) -> list[int]:
    """Waits for every process (until the deadline); their exit codes."""
    codes = []
    for p in self.procs:
      left = max(self.deadline - time.monotonic(), 1)
      try:
        codes.append(p.wait(timeout=left))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(
          f"processes did not finish:\n{self.output()}"
        ) from None
    self.procs = []
    return codes

  def wait_for(self, condition, what: str) -> None:
    """Polls `condition()` until true (fails at the deadline or on exit)."""
    while not condition():
      if time.monotonic() > self.deadline:
        self.kill()
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()}")
      if any(p.poll() is not None for p in self.procs):
        raise AssertionError(f"exited before {what}:\n{self.output()}")
      time.sleep(0.2)

  def signal(self, sig: int) -> None:
    """Sends `sig` to every process (as a scheduler would)."""
    for p in self.procs:
      if p.poll() is None:
        os.killpg(p.pid, sig)

  def kill(self) -> None:
    """SIGKILL to every process group still alive, then reap them."""
    for p in self.procs:
      if p.poll() is None:
        try:
          os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
          pass
      p.wait()
    self.procs = []

  def output(self) -> str:
    """The last lines of every log of this cluster."""
    out = []
    for log in self._logs:
      log.flush()
      with open(log.name) as f:
        lines = f.read().splitlines()
      out.append(f"== {os.path.basename(log.name)}\n" + "\n".join(lines[-40:]))
    return "\n".join(out)

  def close(self) -> None:
    self.kill()
    for log in self._logs:
      log.close()
