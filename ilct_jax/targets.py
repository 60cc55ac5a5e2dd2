"""The chips users rent, by name, as devices a CPU host can compile for.

Owns the table of Cloud TPU slices (`TOPOLOGIES`: `v4-8`, `v5e-8`, ...) and
their chips' datasheet figures (`CHIPS`), and `devices(name)`: the
compile-only devices of that slice, made by libtpu's topology description
with no TPU present (`jax.experimental.topologies.get_topology_desc`, as
MaxText's `train_compile.py` does). `offline_environment()` sets what libtpu
reads before jax starts, so that nothing leaves the machine: the host backend
stays the CPU and libtpu asks no cloud metadata server.

GPUs: jax 0.10's CUDA plugin cannot make compile-only devices on a host
without a GPU driver (docs/SCALING.md, deviceless GPU compilation), so no GPU
target is listed here; `tools/device_check.sh` is the GPU path.
"""

import dataclasses
import os

# Per chip, from the Cloud TPU system-architecture pages (docs.cloud.google.com
# /tpu/docs/v4, /v5e, /v5p-training, /v6e): peak dense bf16 TFLOP/s, HBM
# capacity (GiB), HBM bandwidth (GB/s) and bidirectional inter-chip
# interconnect bandwidth (GB/s). A float32 matmul runs at the bf16 peak under
# JAX's default precision on TPU (one bf16 pass). v4's page gives no ICI
# figure per chip: 600 GB/s is the v4 paper's 6 links x 50 GB/s each way
# (Jouppi et al., ISCA 2023), the same form as the other pages' figure.


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip's datasheet figures."""

  name: str
  peak_tflops: float
  hbm_gib: float
  hbm_gbps: float
  ici_gbps: float


CHIPS = {
  "v4": Chip("TPU v4", 275.0, 32.0, 1200.0, 600.0),
  "v5e": Chip("TPU v5e", 197.0, 16.0, 819.0, 400.0),
  "v5p": Chip("TPU v5p", 459.0, 95.0, 2765.0, 1200.0),
  "v6e": Chip("TPU v6e", 918.0, 32.0, 1638.0, 800.0),
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A Cloud TPU slice type as libtpu names it (MaxText's table of names).

  Attributes:
    chip: key of CHIPS.
    topology_name: libtpu's "<gen>:<shape>".
    chip_config: "megacore" (v4, v5p: one device per chip, both cores) or
      "default".
    host_bounds: chips per host along each axis.
    chips: chips in one slice.
  """

  chip: str
  topology_name: str
  chip_config: str
  host_bounds: tuple[int, int, int]
  chips: int

  @property
  def hosts(self) -> int:
    per_host = self.host_bounds[0] * self.host_bounds[1] * self.host_bounds[2]
    return self.chips // per_host


TOPOLOGIES = {
  "v4-8": Topology("v4", "v4:2x2x1", "megacore", (2, 2, 1), 4),
  "v4-16": Topology("v4", "v4:2x2x2", "megacore", (2, 2, 1), 8),
  "v4-32": Topology("v4", "v4:2x2x4", "megacore", (2, 2, 1), 16),
  "v4-64": Topology("v4", "v4:2x4x4", "megacore", (2, 2, 1), 32),
  "v5p-8": Topology("v5p", "v5:2x2x1", "megacore", (2, 2, 1), 4),
  "v5p-16": Topology("v5p", "v5:2x2x2", "megacore", (2, 2, 1), 8),
  "v5p-32": Topology("v5p", "v5:2x2x4", "megacore", (2, 2, 1), 16),
  "v5e-4": Topology("v5e", "v5e:2x2", "default", (2, 2, 1), 4),
  "v5e-8": Topology("v5e", "v5e:2x4", "default", (2, 4, 1), 8),
  "v5e-16": Topology("v5e", "v5e:4x4", "default", (2, 2, 1), 16),
  "v5e-32": Topology("v5e", "v5e:4x8", "default", (2, 2, 1), 32),
  "v6e-4": Topology("v6e", "v6e:2x2", "default", (2, 2, 1), 4),
  "v6e-8": Topology("v6e", "v6e:2x4", "default", (2, 4, 1), 8),
  "v6e-16": Topology("v6e", "v6e:4x4", "default", (2, 2, 1), 16),
  "v6e-32": Topology("v6e", "v6e:4x8", "default", (2, 2, 1), 32),
}


def topology(name: str) -> Topology:
  """The named slice; a clear error lists the known names."""
  if name not in TOPOLOGIES:
    raise ValueError(
      f"--topology={name!r} is unknown; choose one of "
      f"{', '.join(TOPOLOGIES)} (GPUs: docs/SCALING.md)"
    )
  return TOPOLOGIES[name]


def offline_environment(name: str = "v4-8") -> None:
  """Sets, before jax is imported, what keeps libtpu on this machine.

  JAX_PLATFORMS=cpu: the host backend is the CPU (no TPU is looked for);
  TPU_SKIP_MDS_QUERY=1: libtpu does not ask the cloud metadata server, so it
  is told the accelerator type and the worker hostnames instead. Values the
  user already set are kept.
  """
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", name)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_WORKER_ID", "0")
  # libtpu takes a machine-wide lockfile (/tmp/libtpu_lockfile) for the TPU
  # it drives; these processes drive none and only compile, so several may
  # run at once (two test workers, a table sweep beside a preflight).
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def devices(name: str, num_slices: int = 1) -> list:
  """Compile-only devices of `num_slices` slices of the named topology."""
  from jax.experimental import topologies  # After offline_environment().

  t = topology(name)
  if num_slices < 1:
    raise ValueError(f"--num_slices must be >= 1, got {num_slices}")
  try:
    desc = topologies.get_topology_desc(
      platform="tpu",
      topology_name=t.topology_name,
      chip_config_name=t.chip_config,
      chips_per_host_bounds=t.host_bounds,
      num_slices=num_slices,
    )
  except Exception as e:  # libtpu missing, too old, or already loaded.
    hint = (
      "install the preflight extra: pip install -e '.[preflight]'"
      if "libtpu" not in str(e) or "not found" in str(e).lower()
      else "call ilct_jax.targets.offline_environment() before importing jax"
    )
    raise RuntimeError(
      f"cannot describe {name} ({str(e).splitlines()[0]}); {hint}"
    ) from e
  return list(desc.devices)
