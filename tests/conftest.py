"""Test setup: 8 fake CPU devices, fast compiles, no TF GPUs, tiny config."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Tests compile many small programs, and compiling is most of their time.
# LLVM's expensive passes cost ~30% of the compile and buy nothing for
# tensors this small. XLA:CPU's MLIR fusion emitters (the default) take
# longer to compile than its older elemental emitters: on the tiny train
# step 2.27 -> 1.33 s, its init 1.42 -> 1.02 s (2-core VM). Tests only;
# the project's programs compile with XLA's defaults.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "")
  + " --xla_llvm_disable_expensive_passes=true"
  + " --xla_cpu_use_fusion_emitters=false"
).strip()

import sys  # noqa: E402

# The host backend is the CPU, and libtpu (the preflight extra) is told the
# accelerator and worker names so that it asks no metadata server and leaves
# the machine alone; several workers may load it (ilct_jax/lab/targets.py).
from ilct_jax.lab import targets  # noqa: E402

targets.offline_environment()

# torch (CPU parity tests only) imports triton lazily, e.g. from
# torch.optim; loading triton's shared library into a process where jaxlib
# already runs segfaults inside libjax_common.so (seen with
# `pytest -n 2 tests/step_test.py tests/optim_test.py`). Triton is GPU-only
# and unused here: a None entry makes `import triton` fail cleanly, and
# torch then runs without it.
sys.modules.setdefault("triton", None)

import jax  # noqa: E402

# Must run before any backend is initialised (flax imagenet train_test.py).
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_threefry_partitionable", True)
# Identical programs recur across tests (the tiny train step on 8 devices)
# and across the xdist workers of one run: a persistent cache shared by the
# run's workers (and passed to subprocesses, tests/cluster.py) compiles each
# of them once.
_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
_CACHE = os.environ.get("ILCT_TEST_JAX_CACHE") or os.path.join(
  tempfile.gettempdir(), f"ilct_jax_cache_{_RUN}"
)
os.makedirs(_CACHE, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import pytest  # noqa: E402


@pytest.fixture
def tiny_config():
  """The tiny test config (configs/tiny.py), unlocked for per-test edits."""
  from configs import tiny

  return tiny.get_config()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny run (6 steps, checkpoints 3 and 6) shared by this worker.

  Trained once per worker: later modules find it complete and return at
  once (a finished workdir resumes to nothing).
  """
  from configs import tiny
  from ilct_jax import train

  workdir = str(tmp_path_factory.getbasetemp() / "tiny_run_6_steps")
  train.train_and_evaluate(tiny.get_config(), workdir)
  return workdir


class Crash(Exception):
  """What `crash_after` raises: a simulated kill of the training process."""


@pytest.fixture
def crash_after(monkeypatch):
  """crash_after(n) makes the input iterator raise Crash after n batches."""
  from ilct_jax.data import pipeline

  real = pipeline.create_iterator

  def arm(n: int) -> type[Crash]:
    def wrapped(config, mesh, *, start_step):
      it = real(config, mesh, start_step=start_step)

      class Limited:
        count = 0

        def __next__(self):
          if self.count >= n:
            raise Crash()
          self.count += 1
          return next(it)

        def close(self):
          it.close()

      return Limited()

    monkeypatch.setattr(pipeline, "create_iterator", wrapped)
    return Crash

  return arm


# The files that take longest (`pytest --durations=0` on 2 cores, longest
# first) run first: pytest-xdist hands out whole files (`--dist loadfile`) in
# collection order (`--no-loadscope-reorder` in pyproject.toml keeps it), so
# the long ones start at once and the short ones fill in around them.
SLOW_FILES_FIRST = (
  "cluster_test.py",  # 2-process clusters, SIGTERM, resume.
  "ablations_test.py",  # 15 train-step compiles.
  "checkpointing_test.py",  # Damage and topology, many restores.
  "device_check_test.py",  # tools/device_check.sh --small.
  "gcs_test.py",  # A GCS emulator and a killed process.
)


def pytest_collection_modifyitems(items):
  def rank(item) -> int:
    name = os.path.basename(str(item.fspath))
    if name in SLOW_FILES_FIRST:
      return SLOW_FILES_FIRST.index(name)
    return len(SLOW_FILES_FIRST)

  items.sort(key=rank)  # Stable: the order within a file is kept.
