"""One Setup per start: what a run's programs share, derived once.

`build(config, mesh, num_examples)` traces the train state's init once,
abstractly (shapes, dtypes and shardings; nothing is allocated), and
gathers the facts every program of a run needs: the network with its
kernels chosen for the mesh, the example shape, the total steps and the
run facts a checkpoint is checked against, the abstract state (the target
of restores and of ahead-of-time compiles) and the samplers' sigmas.
Training, opening a run (`runs.load_run`: sample, eval, inspect,
the notebook), the benchmark and the preflight each build one and pass it
on, so no program re-derives these from the whole config
(docs/DESIGN.md, from a batch to a checkpoint).
"""

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh

from ilct_jax import parallel, sampling
from ilct_jax import state as state_lib

PyTree = Any


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  """K = (num_examples // global_batch) * epochs, or train.num_steps."""
  if config.train.num_steps > 0:
    return int(config.train.num_steps)
  return (num_examples // config.train.batch_size) * config.train.epochs


def run_meta(config: ml_collections.ConfigDict, num_examples: int) -> dict:
  """Facts stored with each checkpoint and checked on resume."""
  return {
    "total_steps": total_steps(config, num_examples),
    "num_examples": num_examples,
    "example_shape": list(state_lib.example_shape(config)),
    "batch_size": config.train.batch_size,
  }


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
  """A run's shared facts for one mesh (built by `build`; immutable).

  Attributes:
    config: the full config.
    mesh: the devices the run's programs are compiled for.
    model: the network, its kernels chosen for the mesh's platform.
    example_shape: (H, W, C) of one training example.
    num_examples: the training set's size (None where unknown or unused).
    abstract_state: the TrainState as ShapeDtypeStructs with their
      (replicated) shardings.
  """

  config: ml_collections.ConfigDict
  mesh: Mesh
  model: nn.Module  # unet.DhariwalUNet or dit.DiT (model.arch).
  example_shape: tuple[int, int, int]
  num_examples: int | None
  abstract_state: state_lib.TrainState

  @property
  def state_sharding(self) -> PyTree:
    """The sharding of every leaf of the state."""
    return jax.tree.map(lambda a: a.sharding, self.abstract_state)

  @property
  def total_steps(self) -> int:
    """K of the run (`total_steps`); needs num_examples unless num_steps."""
    return total_steps(self.config, self.num_examples or 0)

  @property
  def meta(self) -> dict:
    """The run facts of `run_meta`, stored with and checked on checkpoints."""
    return run_meta(self.config, self.num_examples)

  @functools.cached_property
  def samplers(self) -> dict[str, tuple[float, ...]]:
    """The sigma schedules of the 1- and 2-step samplers."""
    return sampling.samplers(self.config)

  def create_state(self) -> state_lib.TrainState:
    """A fresh train state, initialised into its sharding on the mesh."""
    return state_lib.create_train_state(
      self.config, self.mesh, self.state_sharding
    )


def build(
  config: ml_collections.ConfigDict,
  mesh: Mesh | None = None,
  num_examples: int | None = None,
) -> Setup:
  """The Setup of `config` on `mesh` (default: every device), with the
  "fsdp" axis of train.fsdp added to it."""
  fsdp = config.train.get("fsdp", 1)
  mesh = parallel.make_mesh(fsdp=fsdp) if mesh is None else mesh
  mesh = parallel.with_fsdp(mesh, fsdp)
  return Setup(
    config=config,
    mesh=mesh,
    model=state_lib.create_model(config, mesh),
    example_shape=state_lib.example_shape(config),
    num_examples=num_examples,
    abstract_state=state_lib.abstract_sharded_state(config, mesh),
  )
