"""--compile_cache: JAX's persistent compilation cache for restarts.

The programs (main, encode, eval) call parallel.start_cluster, which turns the
cache on in the flag's directory unless the environment or the process has
already chosen one (as this test session has: tests/conftest.py).
"""

import os

import jax
import jax.numpy as jnp
import pytest
from jax._src import compilation_cache  # The cache object of this process.

from ilct_jax import parallel


@pytest.fixture
def no_cache_dir(monkeypatch):
  """This process without a cache dir; the session's dir put back after."""
  before = jax.config.jax_compilation_cache_dir
  min_time = jax.config.jax_persistent_cache_min_compile_time_secs
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", before)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
  compilation_cache.reset_cache()


def test_flag_dir_is_used_and_a_second_compile_loads_from_it(
  no_cache_dir, tmp_path
):
  path = str(tmp_path / "xla")
  assert parallel.enable_compile_cache(path) == path
  assert jax.config.jax_compilation_cache_dir == path
  assert (
    jax.config.jax_persistent_cache_min_compile_time_secs
    == parallel.CACHE_MIN_COMPILE_SECONDS
  )
  # Every compile is worth an entry here, so that a small one shows it.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

  def f(x):
    return jnp.sin(x) * 3.0 + 0.25

  x = jnp.arange(7.0)
  jax.jit(f)(x).block_until_ready()
  entries = os.listdir(path)
  assert entries, "the compile wrote no cache entry"
  hits = []

  def listener(event, **kwargs):
    hits.append(event)

  jax.monitoring.register_event_listener(listener)
  try:
    jax.clear_caches()  # As a new process: nothing compiled in memory.
    jax.jit(f)(x).block_until_ready()
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert "/jax/compilation_cache/cache_hits" in hits
  assert sorted(os.listdir(path)) == sorted(entries)  # Loaded, not rewritten.


def test_empty_flag_turns_it_off(no_cache_dir):
  assert parallel.enable_compile_cache("") is None
  assert jax.config.jax_compilation_cache_dir is None


def test_a_configured_dir_wins_over_the_flag(no_cache_dir, tmp_path):
  # JAX_COMPILATION_CACHE_DIR in a program's environment arrives this way.
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "env"))
  assert parallel.enable_compile_cache(str(tmp_path / "flag")) == str(
    tmp_path / "env"
  )
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env")


def test_home_is_expanded(no_cache_dir, monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  assert parallel.enable_compile_cache("~/.cache/x") == str(
    tmp_path / ".cache/x"
  )
