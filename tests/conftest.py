"""Test setup: 8 fake CPU devices, fast compiles, no TF GPUs, tiny config."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

# Must run before any backend is initialised (flax imagenet train_test.py).
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_threefry_partitionable", True)

import pytest  # noqa: E402


@pytest.fixture
def tiny_config():
  """The tiny test config (configs/tiny.py), unlocked for per-test edits."""
  from configs import tiny

  return tiny.get_config()
