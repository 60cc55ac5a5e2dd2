"""Host memory of the programs on glibc Linux: huge pages, freed pages back.

Two measured behaviours of XLA:CPU under glibc's malloc (docs/DESIGN.md,
speed; figures from the paper UNet, batch 8, on a 2-core CPU):

- Each execution allocates its temporary buffer afresh (1.1 GiB for the
  paper step), and glibc serves it with a new mmap that the step then
  faults in 4 KiB page by page: 275k page faults and 0.4 s of system time
  per step, plus TLB misses in every kernel. With glibc's tunable
  `glibc.malloc.hugetlb=1`, malloc asks for transparent huge pages on its
  maps (madvise), and the step takes 13% less time (3.19 -> 2.76 s).
  glibc reads tunables only at process start, so `use_huge_pages()`, the
  first call of every program (`main`, `benchmark`, `data.encode`,
  `evaluation.evaluate`), runs the same command again with the tunable added
  to GLIBC_TUNABLES. Only on CPU hosts: on a TPU or GPU host the step's
  buffers live on the accelerator, and the process is left as it is
  (`accelerator_host`). ILCT_JAX_HUGE_PAGES=0 (the opt-out), a
  GLIBC_TUNABLES that already names the tunable, a non-glibc C library or
  THP set to `never` leave the process as it is too.
- Compiling the paper step leaves about 1 GiB of freed but unreturned heap;
  `release_free_memory()` (glibc's malloc_trim) hands it back, and the
  programs call it once compiling and state creation are over, so the peak
  of the training loop is 1 GiB lower.

Nothing here imports jax: `use_huge_pages` runs before the heavy imports.
"""

import ctypes
import glob
import os
import sys

HUGETLB = "glibc.malloc.hugetlb"
OPT_OUT = "ILCT_JAX_HUGE_PAGES"  # "0": leave malloc as it is.
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc() -> bool:
  try:
    return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
  except (ValueError, OSError):
    return False


def thp_mode(path: str = _THP_MODE) -> str:
  """The kernel's THP setting (`always`, `madvise`, `never`; '' if unknown)."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1 : end] if 0 <= start < end else ""


# Device nodes of accelerators: NVIDIA GPUs, TPU v2-v4 (accel), TPU v5e+
# (vfio groups).
ACCELERATOR_NODES = (
  "/dev/nvidia[0-9]*",
  "/dev/accel[0-9]*",
  "/dev/vfio/[0-9]*",
)


def accelerator_host(
  environ: dict[str, str], nodes: tuple[str, ...] = ACCELERATOR_NODES
) -> bool:
  """Whether JAX will run on an accelerator here, decided before jax loads.

  JAX_PLATFORMS decides when set (its first entry is the default backend:
  "cpu" is a CPU host, anything else an accelerator host); otherwise an
  accelerator's device node decides.
  """
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() != "cpu"
  return any(glob.glob(pattern) for pattern in nodes)


def tunables_with_huge_pages(environ: dict[str, str]) -> str | None:
  """GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` added, or None to keep it.

  None when the user opted out (ILCT_JAX_HUGE_PAGES=0) or already set the
  tunable (any value: theirs wins).
  """
  if environ.get(OPT_OUT, "1") == "0":
    return None
  current = environ.get("GLIBC_TUNABLES", "")
  if HUGETLB in current:
    return None
  return ":".join(t for t in (current, f"{HUGETLB}=1") if t)


def use_huge_pages() -> None:
  """Re-executes this command once with `glibc.malloc.hugetlb=1` set.

  Same PID, arguments, environment otherwise and open files; the
  re-executed process finds the tunable set and carries on. A no-op where
  it cannot help (see the module docstring).
  """
  if sys.platform != "linux" or not _glibc() or not sys.executable:
    return
  if thp_mode() in ("never", "") or accelerator_host(dict(os.environ)):
    return
  tunables = tunables_with_huge_pages(dict(os.environ))
  if tunables is None:
    return
  before = os.environ.get("GLIBC_TUNABLES")
  os.environ["GLIBC_TUNABLES"] = tunables
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execv(sys.executable, sys.orig_argv)
  except OSError as e:  # Carry on as launched: only speed is at stake.
    if before is None:
      del os.environ["GLIBC_TUNABLES"]
    else:
      os.environ["GLIBC_TUNABLES"] = before
    print(f"ilct_jax: running without huge pages ({e})", file=sys.stderr)


def huge_pages_note() -> str:
  """One line for logs: the malloc tunable and THP mode in effect."""
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  setting = next(
    (t for t in tunables.split(":") if t.startswith(HUGETLB)), "unset"
  )
  return f"{setting} (kernel THP: {thp_mode() or 'unknown'})"


def rss_gib() -> float:
  """This process's resident memory now, in GiB (0.0 where unknown)."""
  try:
    with open("/proc/self/statm") as f:
      pages = int(f.read().split()[1])
  except (OSError, ValueError, IndexError):
    return 0.0
  return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def release_free_memory() -> bool:
  """glibc's malloc_trim(0): freed heap pages back to the OS.

  Returns whether glibc released anything (False off glibc).
  """
  try:
    libc = ctypes.CDLL(None)
    trim = libc.malloc_trim
  except (OSError, AttributeError):
    return False
  trim.argtypes = [ctypes.c_size_t]
  return bool(trim(0))
