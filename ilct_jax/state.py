"""Training state: the model, its parameters, EMAs and optimizer state.

`TrainState` is a pure pytree (flax.struct) so that the train step can be one
donated `jit`. There is no target network: iCT/iLCT use the online parameters
under `stop_gradient` as the teacher (ALGORITHM.md §5). Several EMAs of the
parameters are tracked at once (ALGORITHM.md §12); evaluation names the decay it
uses. The state is created shape-first (`jax.eval_shape`) and materialised by a
`jit` with replicated out-shardings, and the same abstract state is the orbax
restore target.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from ilct_jax import choices, kernels, parallel, rng
from ilct_jax import optim as optim_lib
from ilct_jax.models import dit, unet

PyTree = Any


ARCHS = ("unet", "dit")
NONFINITE_POLICIES = ("halt", "skip", "authors")
# The authors halve the lr when their NaN counter exceeds 100 and reset it:
# at the 101st, 202nd, ... non-finite step (LCT `ot`, train_cm_latent.py).
AUTHORS_NAN_PERIOD = 101


def authors_lr_scale(nonfinite: jax.Array) -> jax.Array:
  """The authors' lr multiplier after `nonfinite` skipped steps: 0.5^k."""
  halvings = (nonfinite // AUTHORS_NAN_PERIOD).astype(jnp.float32)
  return jnp.exp2(-halvings)


class TrainState(flax.struct.PyTreeNode):
  """step, online params, one EMA tree per decay, optimizer state, counters."""

  step: jax.Array
  params: PyTree
  ema_params: tuple[PyTree, ...]
  opt_state: optax.OptState
  nonfinite: jax.Array  # Number of skipped (non-finite) updates so far.
  ema_decays: tuple[float, ...] = flax.struct.field(pytree_node=False)

  def apply_gradients(
    self,
    tx: optax.GradientTransformation,
    grads: PyTree,
    finite: jax.Array,
    policy: str = "halt",
  ) -> "TrainState":
    """One optimizer + EMA update; a non-finite step is skipped and counted.

    `policy` (train.nonfinite, docs/ALGORITHM.md §8): "halt" and "skip"
    leave params, moments and EMAs untouched on a non-finite step (the
    train loop stops after train.max_nonfinite of them under "halt");
    "authors" does as the authors' training loop (LCT `ot`,
    train_cm_latent.py): the optimizer step is skipped but every EMA still
    moves toward the unchanged params, and the learning rate halves each
    time more than 100 such steps have been counted since the last halving
    (`authors_lr_scale`).

    The optimizer is passed in rather than stored: a stored transformation
    would make the pytree metadata (and so the jit cache key) differ per
    instance. The skip is a `lax.cond`, not a select of new against old
    values: a select reads and writes every parameter, moment and EMA once
    more (0.47 s of a 3.7 s paper step on CPU, benchmark --mode=train),
    while the cond runs one branch and updates the donated buffers in place.
    """
    authors = policy == "authors"

    def step_emas(state: "TrainState", params: PyTree) -> tuple:
      return tuple(
        jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p, ema, params)
        for d, ema in zip(state.ema_decays, state.ema_params)
      )

    def update(state: "TrainState") -> "TrainState":
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      if authors:  # RAdam's step (coupled L2 included) is linear in lr.
        scale = authors_lr_scale(state.nonfinite)
        updates = jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)
      params = optax.apply_updates(state.params, updates)
      return state.replace(
        step=state.step + 1,
        params=params,
        ema_params=step_emas(state, params),
        opt_state=opt_state,
      )

    def skip(state: "TrainState") -> "TrainState":
      state = state.replace(step=state.step + 1, nonfinite=state.nonfinite + 1)
      if authors:
        return state.replace(ema_params=step_emas(state, state.params))
      return state

    return jax.lax.cond(finite, update, skip, self)

  def ema(self, decay: float) -> PyTree:
    """EMA params for `decay`; 0 returns the online params."""
    if decay == 0:
      return self.params
    for d, tree in zip(self.ema_decays, self.ema_params):
      if abs(d - decay) < 1e-12:
        return tree
    raise ValueError(
      f"EMA decay {decay} is not tracked; tracked decays are "
      f"{list(self.ema_decays)} (set ema.decays or sample.ema_decay)"
    )


def create_model(
  config: ml_collections.ConfigDict, target: kernels.Target = None
) -> nn.Module:
  """The consistency network F_theta named by `config.model`.

  Args:
    config: the full config.
    target: the mesh (or devices, or platform name) the network's programs
      are compiled for: its kernels are chosen for that platform
      (`kernels.select`), not for the host's default backend. None: the
      devices `parallel.make_mesh()` uses. Parameters do not depend on it.
  """
  m = config.model
  # A run's config.json written before model.arch existed lacks it.
  arch = m.get("arch", "unet")
  choices.check("model.arch", arch, ARCHS)
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  choices.check("model.dtype", m.dtype, tuple(dtypes))
  if arch == "dit":
    return _create_dit(config, dtypes[m.dtype], kernels.select(m, target))
  choices.check("model.name", m.name, ("dhariwal_unet",))
  if m.get("num_classes", 0):
    raise ValueError(
      f"model.num_classes={m.num_classes}: the UNet is unconditional; set "
      "model.arch=dit for a class-conditional model, or model.num_classes=0"
    )
  return unet.DhariwalUNet(
    out_channels=config.data.channels,
    model_channels=m.model_channels,
    channel_mult=tuple(m.channel_mult),
    num_blocks=m.num_blocks,
    attn_resolutions=tuple(m.attn_resolutions),
    head_channels=m.head_channels,
    dropout=m.dropout,
    norm=m.norm,
    dtype=dtypes[m.dtype],
    # A run's config.json written before model.remat existed lacks it.
    remat=bool(m.remat),
    kernels=kernels.select(m, target),
  )


def _create_dit(config, dtype, kernel_forms) -> dit.DiT:
  m, d = config.model, config.model.dit
  choices.check("model.norm", m.norm, dit.NORMS)
  choices.check("model.dit.mlp", d.mlp, dit.MLPS)
  depth, hidden, heads = dit.size(d.size)
  return dit.DiT(
    out_channels=config.data.channels,
    patch=d.patch,
    depth=d.depth or depth,
    hidden=d.hidden or hidden,
    heads=d.heads or heads,
    mlp_ratio=float(d.mlp_ratio),
    mlp=d.mlp,
    norm=m.norm,
    qk_norm=bool(d.qk_norm),
    rope=bool(d.rope),
    freq_filter=bool(d.freq_filter),
    num_classes=int(m.num_classes),
    null_label=m.label_dropout > 0,
    dtype=dtype,
    remat=bool(m.remat),
    kernels=kernel_forms,
  )


def example_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of one training example."""
  d = config.data
  return (d.image_size, d.image_size, d.channels)


def _init(
  config: ml_collections.ConfigDict,
  key: jax.Array,
  target: kernels.Target = "cpu",
) -> TrainState:
  # Parameters and their init values do not depend on the kernels: shapes
  # alone (`abstract_state`) take the CPU forms and need no devices.
  model = create_model(config, target)
  x = jnp.zeros((1, *example_shape(config)), jnp.float32)
  params = model.init(key, x, jnp.zeros((1,)), train=False)["params"]
  tx = optim_lib.create_optimizer(config.optim)
  decays = tuple(float(d) for d in config.ema.decays)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    ema_params=tuple(params for _ in decays),
    opt_state=tx.init(params),
    nonfinite=jnp.zeros((), jnp.int32),
    ema_decays=decays,
  )


def abstract_state(config: ml_collections.ConfigDict) -> TrainState:
  """Shapes and dtypes of the state, without allocating it."""
  return jax.eval_shape(lambda k: _init(config, k), jax.random.key(0))


def abstract_sharded_state(
  config: ml_collections.ConfigDict, mesh: Mesh
) -> TrainState:
  """The state as ShapeDtypeStructs with their shardings: a restore and
  compile target. Every leaf is replicated, or on a mesh with an "fsdp"
  axis split over it (`parallel.state_sharding`). One abstract trace of
  the init (`setup.build` keeps the result)."""
  return jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(
      a.shape, a.dtype, sharding=parallel.state_sharding(mesh, a.shape)
    ),
    abstract_state(config),
  )


def create_train_state(
  config: ml_collections.ConfigDict,
  mesh: Mesh,
  sharding: PyTree | None = None,
) -> TrainState:
  """Initialises the state directly into its sharding (replicated, or split
  over "fsdp").

  Args:
    config: the full config.
    mesh: the devices.
    sharding: the state's sharding tree (`Setup.state_sharding`); None
      derives it, at the cost of one more abstract trace of the init.
  """
  if sharding is None:
    sharding = jax.tree.map(
      lambda a: a.sharding, abstract_sharded_state(config, mesh)
    )
  key = rng.stream(config.seed, "init")
  init = jax.jit(lambda k: _init(config, k, mesh), out_shardings=sharding)
  return init(key)
