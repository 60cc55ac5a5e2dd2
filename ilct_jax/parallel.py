"""Devices and layouts: the one mesh builder, shardings, host <-> global rows.

Every program of ilct_jax runs under `jit` over a mesh named "data"
(docs/DESIGN.md, parallelism): the batch is split on "data", the train state
is replicated, and the compiler inserts the collectives. With train.fsdp > 1
the training mesh gains a second axis "fsdp" over which the state is split
(params, EMAs, optimizer moments); the batch is split over both axes. The
mesh axis type is always Auto, so sharding constraints are compiler hints and
never type errors.
Host-side helpers turn each process's rows into one global array and back.
Programs start here: `start_cluster` joins the JAX cluster from the cluster
flags and turns on the persistent compile cache of --compile_cache.
The XLA options and kernel forms of each platform live in `ilct_jax.kernels`.
"""

import os
import socket
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"  # The batch axis of every mesh.
FSDP = "fsdp"  # The state-sharding axis of a train.fsdp > 1 mesh.
# Leaves smaller than this stay replicated under fsdp: sharding a bias or a
# norm scale saves nothing and adds a gather per use.
FSDP_MIN_SIZE = 2**14


def make_mesh(devices: Sequence[Any] | None = None, fsdp: int = 1) -> Mesh:
  """An Auto-typed mesh over all (or the given) devices: 1-D "data", or
  with `fsdp` > 1 the 2-D ("data", "fsdp") of shape (n / fsdp, fsdp), whose
  "fsdp" axis shards the train state (`state_sharding`; docs/DESIGN.md,
  sharded state)."""
  devices = jax.devices() if devices is None else list(devices)
  auto = jax.sharding.AxisType.Auto
  if fsdp <= 1:
    return jax.make_mesh((len(devices),), (DATA,), devices=devices,
                         axis_types=(auto,))  # fmt: skip
  if len(devices) % fsdp:
    raise ValueError(
      f"train.fsdp={fsdp} does not divide the {len(devices)} devices; use a "
      f"divisor of {len(devices)}"
    )
  return jax.make_mesh(
    (len(devices) // fsdp, fsdp),
    (DATA, FSDP),
    devices=devices,
    axis_types=(auto, auto),
  )


def with_fsdp(mesh: Mesh, fsdp: int) -> Mesh:
  """`mesh`'s devices with an "fsdp" axis of size `fsdp` (as is if 1)."""
  if fsdp <= 1 or FSDP in mesh.axis_names:
    return mesh
  return make_mesh(list(mesh.devices.flat), fsdp)


def fsdp_size(mesh: Mesh) -> int:
  """Devices per state shard (1: the state is replicated)."""
  return int(mesh.shape.get(FSDP, 1))


def state_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
  """Where one state leaf lives: split over "fsdp" on its largest dimension
  that the axis divides (replicated over "data"), or replicated when the
  mesh has no such axis or the leaf is small or indivisible. Params, EMAs
  and optimizer moments share a parameter's shape, hence its layout."""
  n = fsdp_size(mesh)
  if n == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
    return replicated(mesh)
  dims = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in dims:
    if shape[i] % n == 0:
      spec = [None] * len(shape)
      spec[i] = FSDP
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def host_mesh(one_cpu_device: bool = False) -> Mesh:
  """A mesh of this process's devices (work without cross-host exchange).

  Args:
    one_cpu_device: on CPU use only the first device. Virtual CPU devices
      (`jax_num_cpu_devices`) share the host's cores, and sharding a large
      convolutional network over them was measured ~5x slower than one.
  """
  devices = jax.local_devices()
  if one_cpu_device and devices[0].platform == "cpu":
    devices = devices[:1]
  return make_mesh(devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device: "data" (and
  "fsdp", whose devices also take their own rows)."""
  if FSDP in mesh.axis_names:
    return NamedSharding(mesh, P((DATA, FSDP)))
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows -> the global array sharded on "data"."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def local_rows(x: jax.Array) -> tuple[np.ndarray, np.ndarray]:
  """This process's rows of a batch-sharded array and their global indices."""
  rows, index, seen = [], [], set()
  for shard in sorted(
    x.addressable_shards, key=lambda s: s.index[0].start or 0
  ):
    start = shard.index[0].start or 0
    if start not in seen:  # Skip replicas of rows already taken.
      seen.add(start)
      rows.append(np.asarray(shard.data))
      index.append(np.arange(start, start + rows[-1].shape[0]))
  return np.concatenate(rows), np.concatenate(index)


def sync(name: str) -> None:
  """A barrier across processes (a no-op in a single process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def define_cluster_flags() -> None:
  """The cluster flags (and --compile_cache) of main, encode and eval.

  Defined by each program's `__main__` only, so modules import cleanly side
  by side.
  """
  flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process JAX cluster detected from the environment (Cloud "
    "TPU pods, SLURM). The explicit flags below need no --distributed.",
  )
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "HOST:PORT of process 0's coordinator, reachable from every process.",
  )
  flags.DEFINE_integer("num_processes", None, "Processes in the cluster.")
  flags.DEFINE_integer("process_id", None, "This process, 0..num_processes-1.")
  flags.DEFINE_list(
    "local_device_ids",
    None,
    "Devices of this host this process uses (e.g. 0,1); default: all.",
  )
  flags.DEFINE_string(
    "compile_cache",
    "~/.cache/ilct_jax/xla",
    "JAX's persistent compilation cache (local or gs://): a restart loads "
    "the compiled step instead of compiling it again. '' turns it off.",
  )


def initialize_cluster(
  distributed: bool = False,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids: Sequence[int | str] | None = None,
) -> None:
  """Starts multi-process JAX when asked; explicit values beat detection.

  With any explicit value, `jax.distributed.initialize` gets those values
  and detects the rest (on TPU pods and under SLURM it can). With
  `distributed` alone, everything is detected. With neither, this process
  runs alone. Either way one line says which process this is and how many
  devices there are in all and on this host.
  """
  explicit = {
    "coordinator_address": coordinator_address,
    "num_processes": num_processes,
    "process_id": process_id,
    "local_device_ids": (
      None if local_device_ids is None else [int(i) for i in local_device_ids]
    ),
  }
  explicit = {k: v for k, v in explicit.items() if v is not None}
  if explicit or distributed:
    try:
      jax.distributed.initialize(**explicit)
    except (ValueError, RuntimeError) as e:
      raise ValueError(
        f"could not join the JAX cluster ({str(e).splitlines()[0]}); outside "
        "a TPU pod or SLURM job pass --coordinator_address=HOST:PORT "
        "--num_processes=N --process_id=I (see docs/SCALING.md)"
      ) from e
  logging.info("%s", describe())


# Programs that compile in less are not worth a disk entry (JAX's default).
CACHE_MIN_COMPILE_SECONDS = 1.0


def start_cluster(values: flags.FlagValues) -> None:
  """`initialize_cluster` from the flags of define_cluster_flags,
  then the compile cache of --compile_cache."""
  initialize_cluster(
    values.distributed,
    values.coordinator_address,
    values.num_processes,
    values.process_id,
    values.local_device_ids,
  )
  enable_compile_cache(values.compile_cache)


def enable_compile_cache(path: str) -> str | None:
  """JAX's persistent compilation cache in `path` ("" = off); the dir used.

  A restart (after preemption, `--mode=sample`, `--mode=eval`) then loads the
  compiled train step and state init instead of compiling them again
  (docs/DESIGN.md, start-up). JAX keys entries on the program, the compile
  options, the devices and its own version, so a changed config or upgrade
  compiles afresh. A dir already configured (JAX_COMPILATION_CACHE_DIR in
  the environment, which JAX reads at import) wins over the flag.
  """
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return configured
  if not path:
    return None
  path = os.path.expanduser(path)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update(
    "jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS
  )
  logging.info("Compile cache: %s", path)
  return path


def describe() -> str:
  """'process 1/2 (host h): 2 of 4 cpu devices (cpu)' for the logs."""
  dev = jax.local_devices()[0]
  return (
    f"JAX {jax.__version__}: process {jax.process_index()}/"
    f"{jax.process_count()} on {socket.gethostname()}: "
    f"{jax.local_device_count()} of {jax.device_count()} devices here "
    f"({dev.platform}, {dev.device_kind})"
  )
