"""The chips users rent, by name, as devices a CPU host can compile for.

Owns the table of Cloud TPU slices (`TOPOLOGIES`: `v4-8`, `v5e-8`, ...) and
their chips' datasheet figures (`CHIPS`), and `devices(name)`: the
compile-only devices of that slice, made by libtpu's topology description
with no TPU present (`jax.experimental.topologies.get_topology_desc`, as
MaxText's `train_compile.py` does). `offline_environment()` sets what libtpu
reads before jax starts, so that nothing leaves the machine: the host backend
stays the CPU and libtpu asks no cloud metadata server.

GPUs (`h100-8`, `h200-8`): jax 0.10's CUDA plugin (the `preflight-gpu`
extra) makes compile-only GPU devices from a target description, with no GPU
or driver on the host (`get_topology_desc(platform="cuda", target_config=
..., topology="1x1x8")`, openxla/xla#16913). The description
(`gpu_target_config`) is written from the NVIDIA datasheets and the CUDA
device properties of compute capability 9.0 (docs/SCALING.md).
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
  # NVIDIA H100 SXM5 / H200 SXM datasheets: dense bf16 989.4 TFLOP/s; HBM
  # as CUDA reports it (79.1 GiB; 140.4 GiB); 3.35 / 4.8 TB/s; NVLink 4
  # 900 GB/s per GPU (bidirectional).
  "h100": Chip("NVIDIA H100 80GB HBM3", 989.4, 79.1, 3350.0, 900.0),
  "h200": Chip("NVIDIA H200", 989.4, 140.4, 4800.0, 900.0),
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
  platform: str = "tpu"

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
  # One 8-GPU host (NVLink); topology "<slices>x<hosts>x<gpus per host>".
  "h100-8": Topology("h100", "1x1x8", "", (8, 1, 1), 8, "gpu"),
  "h200-8": Topology("h200", "1x1x8", "", (8, 1, 1), 8, "gpu"),
}

# CUDA device properties of compute capability 9.0 (CUDA C++ Programming
# Guide, "Technical Specifications per Compute Capability") and the SXM
# parts' SM counts and clocks (NVIDIA H100 / H200 datasheets): what XLA's
# GPU compiler reads instead of querying a device.
_SM90 = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  shared_memory_per_block_optin: 232448
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: {l2}
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 minor: 0 }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 8 }}
device_description_str: "{name}"
"""


def gpu_target_config(chip: str) -> str:
  """XLA's GPU target description (text proto) of an `h100`/`h200` chip."""
  c = CHIPS[chip]
  return _SM90.format(
    bandwidth=int(c.hbm_gbps * 1e9),
    l2=50 * 2**20,  # Both are GH100 parts: 50 MB of L2.
    memory=int(c.hbm_gib * 2**30),
    name=c.name,
  )


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
  if t.platform == "gpu":
    return _gpu_devices(name, t, num_slices)
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
      else "call ilct_jax.lab.targets.offline_environment() before jax"
    )
    raise RuntimeError(
      f"cannot describe {name} ({str(e).splitlines()[0]}); {hint}"
    ) from e
  return list(desc.devices)


def _gpu_devices(name: str, t: Topology, num_slices: int) -> list:
  from jax.experimental import topologies

  try:
    desc = topologies.get_topology_desc(
      platform="cuda",
      topology=f"{num_slices}x1x{t.chips}",
      target_config=gpu_target_config(t.chip),
    )
  except Exception as e:  # No CUDA plugin in this environment.
    raise RuntimeError(
      f"cannot describe {name} ({str(e).splitlines()[0]}); install the "
      "GPU preflight extra: pip install -e '.[preflight-gpu]'"
    ) from e
  return list(desc.devices)
