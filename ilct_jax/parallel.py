"""Devices and layouts: the one mesh builder, shardings, host <-> global rows.

Every program of ilct_jax runs under `jit` over a 1-D mesh named "data"
(docs/DESIGN.md, parallelism): the batch is split on "data", the train state
is replicated, and the compiler inserts the collectives. The mesh axis type is
always Auto, so sharding constraints are compiler hints and never type errors.
Host-side helpers turn each process's rows into one global array and back.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"  # The batch axis of every mesh.


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D Auto-typed mesh named "data" over all (or the given) devices."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
    (len(devices),),
    (DATA,),
    devices=devices,
    axis_types=(jax.sharding.AxisType.Auto,),
  )


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
  """Leading (batch) dimension split over "data"."""
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
