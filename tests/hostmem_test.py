"""ilct_jax.hostmem: the huge-page re-exec and returning freed heap pages."""

import os
import subprocess
import sys
import textwrap

import pytest

from ilct_jax import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tunables_add_hugetlb_and_keep_what_is_there():
  assert hostmem.tunables_with_huge_pages({}) == "glibc.malloc.hugetlb=1"
  assert (
    hostmem.tunables_with_huge_pages(
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    )
    == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  )


def test_tunables_leave_a_user_choice_and_the_opt_out_alone():
  user = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
  assert hostmem.tunables_with_huge_pages(user) is None
  assert hostmem.tunables_with_huge_pages({hostmem.OPT_OUT: "0"}) is None
  assert hostmem.tunables_with_huge_pages({hostmem.OPT_OUT: "1"}) == (
    "glibc.malloc.hugetlb=1"
  )


@pytest.mark.parametrize(
  "text, mode",
  [
    ("always [madvise] never\n", "madvise"),
    ("[always] madvise never\n", "always"),
    ("always madvise [never]\n", "never"),
    ("garbage\n", ""),
  ],
)
def test_thp_mode_reads_the_bracketed_choice(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert hostmem.thp_mode(str(path)) == mode


def test_thp_mode_is_empty_without_the_file(tmp_path):
  assert hostmem.thp_mode(str(tmp_path / "absent")) == ""


def _run(code: str, **extra_env) -> str:
  """stdout of `python -c code` without GLIBC_TUNABLES or the opt-out."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env.pop(hostmem.OPT_OUT, None)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update(extra_env)
  return subprocess.run(
    [sys.executable, "-c", code],
    env=env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout


_PROBE = textwrap.dedent(
  """
  import os
  from ilct_jax import hostmem
  print("before", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
  hostmem.use_huge_pages()
  print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
  """
)


def _can_reexec() -> str:
  if sys.platform != "linux" or not hostmem._glibc():  # noqa: SLF001
    return "needs Linux with glibc"
  if hostmem.thp_mode() in ("never", ""):
    return "the kernel's transparent huge pages are off or unknown here"
  return ""


@pytest.mark.skipif(bool(_can_reexec()), reason=_can_reexec() or "-")
def test_use_huge_pages_reexecutes_once_in_the_same_process():
  out = _run(_PROBE, GLIBC_TUNABLES="glibc.malloc.arena_max=4")
  lines = [line.split() for line in out.split("\n") if line]
  # The first image prints "before" and execs; the second prints both.
  assert [line[0] for line in lines] == ["before", "before", "after"]
  assert len({line[1] for line in lines}) == 1, "a new process, not an exec"
  assert lines[0][2] == "glibc.malloc.arena_max=4"
  want = "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
  assert lines[1][2] == want and lines[2][2] == want


def test_a_failed_exec_carries_on_as_launched(monkeypatch, capsys):
  def fail(path, argv):
    raise OSError("no exec here")

  monkeypatch.setattr(hostmem, "thp_mode", lambda: "madvise")
  monkeypatch.setattr(hostmem, "_glibc", lambda: True)
  monkeypatch.setattr(hostmem.sys, "platform", "linux")
  monkeypatch.setattr(hostmem.os, "execv", fail)
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  monkeypatch.delenv(hostmem.OPT_OUT, raising=False)
  hostmem.use_huge_pages()
  assert os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
  assert "running without huge pages (no exec here)" in capsys.readouterr().err


def test_opt_out_keeps_the_process_as_it_is():
  out = _run(_PROBE, **{hostmem.OPT_OUT: "0"}).split()
  assert out[0] == "before" and out[3] == "after"
  assert out[2] == out[5] == "None"


_FRAGMENTS = textwrap.dedent(
  """
  import ctypes
  from ilct_jax import hostmem
  libc = ctypes.CDLL(None)
  libc.malloc.restype = ctypes.c_void_p
  libc.malloc.argtypes = [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  # 4000 touched blocks of 100 KB (below mmap's threshold: heap memory);
  # freeing every other one leaves 200 MB of holes between live blocks,
  # which glibc keeps: nothing free sits at the top of the heap to trim.
  blocks = [libc.malloc(100_000) for _ in range(4000)]
  for p in blocks:
    ctypes.memset(p, 1, 100_000)
  for p in blocks[::2]:
    libc.free(p)
  held = hostmem.rss_gib()
  released = hostmem.release_free_memory()
  print(held, hostmem.rss_gib(), released)
  """
)


@pytest.mark.skipif(
  sys.platform != "linux" or not hostmem._glibc(),  # noqa: SLF001
  reason="malloc_trim is glibc's",
)
def test_release_free_memory_returns_the_holes_of_a_fragmented_heap():
  out = _run(_FRAGMENTS, **{hostmem.OPT_OUT: "0"}).split()
  held, after, released = float(out[0]), float(out[1]), out[2]
  assert released == "True"
  assert held > 0.3, held  # The live half and the holes are resident.
  assert held - after > 0.15, (held, after)  # Of the ~0.19 GiB of holes.


def test_rss_is_positive_here():
  assert 0.0 < hostmem.rss_gib() < 1024.0


def test_accelerator_host_is_decided_before_jax(tmp_path):
  node = tmp_path / "nvidia0"
  assert hostmem.accelerator_host({"JAX_PLATFORMS": "tpu"})
  assert hostmem.accelerator_host({"JAX_PLATFORMS": "cuda,cpu"})
  assert not hostmem.accelerator_host({"JAX_PLATFORMS": "cpu"}, (str(node),))
  assert not hostmem.accelerator_host({}, (str(tmp_path / "nvidia[0-9]*"),))
  node.write_text("")
  assert hostmem.accelerator_host({}, (str(tmp_path / "nvidia[0-9]*"),))
  # JAX_PLATFORMS wins over a device node (a CPU run on a GPU machine).
  assert not hostmem.accelerator_host(
    {"JAX_PLATFORMS": "cpu"}, (str(tmp_path / "nvidia[0-9]*"),)
  )


def test_no_reexec_on_an_accelerator_host():
  """Huge pages are a CPU-host measure: a TPU or GPU process starts once."""
  out = _run(_PROBE, JAX_PLATFORMS="tpu", GLIBC_TUNABLES="glibc.a=1")
  lines = [line.split() for line in out.split("\n") if line]
  assert [line[0] for line in lines] == ["before", "after"]
  assert lines[1][2] == "glibc.a=1"
