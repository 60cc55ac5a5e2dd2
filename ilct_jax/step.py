"""One pure consistency-training step, jitted once over a mesh of all devices.

Implements ALGORITHM.md §8: OT pairing of data and unit noise, the
curriculum N(k) and scale c(N) from the traced step, the lognormal pair
index, the online output at t and the stop-gradient teacher at r (the online
params themselves, ALGORITHM.md §5), the robust CT loss, the masked diffusion
loss, and the RAdam + EMA update. A non-finite loss or gradient skips the
update and is counted (`state.nonfinite`); `train.nonfinite` says what else
happens (the loop halts after `train.max_nonfinite`, or the authors' policy).

The batch is sharded on the mesh axis "data" and the state is replicated
(or split over "fsdp", train.fsdp > 1); the compiler inserts the gradient
all-reduce and the parameter gathers (no pmap, no pmean).
"""

import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from ilct_jax import consistency, coupling, losses, parallel, rng
from ilct_jax import optim as optim_lib
from ilct_jax import state as state_lib

PyTree = Any
Metrics = dict[str, jax.Array]


def split_batch(batch) -> tuple[jax.Array, jax.Array | None]:
  """(x0, labels): a class-conditional batch is an (x, labels) pair."""
  if isinstance(batch, (tuple, list)):
    return batch[0], batch[1]
  return batch, None


def drop_labels(
  key: jax.Array, labels: jax.Array, num_classes: int, rate: float
) -> jax.Array:
  """Each label replaced by the null label (= num_classes) with probability
  `rate`: the authors' LabelEmbedder.token_drop (ALGORITHM.md §21)."""
  drop = jax.random.uniform(key, labels.shape) < rate
  return jnp.where(drop, num_classes, labels).astype(jnp.int32)


def _label_kwargs(
  key: jax.Array, labels: jax.Array | None, model: ml_collections.ConfigDict
) -> dict[str, Any]:
  if labels is None:
    return {}
  if model.label_dropout > 0:
    labels = drop_labels(key, labels, model.num_classes, model.label_dropout)
  return {"labels": labels}


def _ct_loss(
  params: PyTree,
  apply_fn: Callable[..., jax.Array],
  x0: jax.Array,
  noise: jax.Array,
  idx: jax.Array,
  sigmas: jax.Array,
  num: jax.Array,
  c: jax.Array,
  key: jax.Array,
  config: ml_collections.ConfigDict,
  labels: jax.Array | None = None,
) -> tuple[jax.Array, Metrics]:
  """Total loss L = L_ct + w * L_diff and its parts (ALGORITHM.md §6-§8)."""
  ct = config.ct
  t, r = sigmas[idx], sigmas[idx + 1]
  bc = lambda v: v[:, None, None, None]
  key_online, key_target = jax.random.split(key)
  key_y, key_y_target = jax.random.split(jax.random.fold_in(key, 1))
  f = functools.partial(consistency.consistency_fn, apply_fn, ct=ct, train=True)
  online = f(
    params,
    x0 + bc(t) * noise,
    t,
    rngs={"dropout": key_online},
    **_label_kwargs(key_y, labels, config.model),
  )
  # Teacher = the current online parameters under stop_gradient (iCT's
  # theta^- = theta). Under dropout the reference's masks differ between the
  # two calls on GPU; we use a separate key to match that (moot at dropout 0).
  # Its labels are dropped by their own draw too: the authors' teacher is a
  # module in train mode whose LabelEmbedder draws again (§21).
  target = jax.lax.stop_gradient(
    f(
      params,
      x0 + bc(r) * noise,
      r,
      rngs={"dropout": key_target},
      **_label_kwargs(key_y_target, labels, config.model),
    )
  )
  weight = consistency.loss_weight(ct.weighting, t, r, ct.sigma_data)
  ct_loss = losses.consistency_loss(ct.loss, online, target, weight, c)
  # TD residual statistics for the logs (Fig. 4 of the paper compares c(N)
  # with their scale): a few reductions of values already in hand.
  td = jax.lax.stop_gradient(online - target)
  metrics = {
    "ct_loss": ct_loss,
    "td_std": jnp.std(td),
    "per_sample/td_rms": jnp.sqrt(losses.per_sample_mse(td, 0.0)),
    "per_sample/sigma": t,
  }
  total = ct_loss
  if ct.diffusion_loss:
    mask = losses.diffusion_mask(idx, num, ct.diffusion_threshold)
    diff = losses.diffusion_loss(online, x0, t, mask, ct.sigma_data)
    total = total + ct.diffusion_weight * diff
    metrics.update(diff_loss=diff, diff_frac=jnp.mean(mask.astype(jnp.float32)))
  return total, metrics


def paired_noise(
  key: jax.Array,
  x0: jax.Array,
  cfg: ml_collections.ConfigDict,
  mesh: Mesh | None,
) -> jax.Array:
  """Unit Gaussian noise, OT-paired with the data (ALGORITHM.md §9)."""
  noise = jax.random.normal(key, x0.shape, jnp.float32)
  if cfg.method == "none":
    return noise
  group_size = cfg.group_size
  if group_size is None:  # A run from before it (run_config.LEGACY_FIELDS).
    devices = 1 if mesh is None else mesh.shape["data"]
    group_size = coupling.legacy_group_size(cfg.scope, x0.shape[0], devices)
  if mesh is not None and parallel.fsdp_size(mesh) > 1:
    # The rows are split over ("data", "fsdp"): pair the global batch and
    # let the compiler place it (the same pairs, ALGORITHM.md §9).
    mesh = None
  return coupling.pair(
    x0,
    noise,
    method=cfg.method,
    group_size=group_size,
    mesh=mesh,
    epsilon=cfg.epsilon,
    iterations=cfg.iterations,
  )


def train_step(
  state: state_lib.TrainState,
  batch: jax.Array,
  *,
  config: ml_collections.ConfigDict,
  apply_fn: Callable[..., jax.Array],
  total_steps: int,
  mesh: Mesh | None = None,
) -> tuple[state_lib.TrainState, Metrics]:
  """One consistency-training update.

  Args:
    state: the replicated train state.
    batch: [B, H, W, C] normalized data x0, sharded on "data", or the
      pair (x0, labels [B]) of a class-conditional model.
    config: the full config (static).
    apply_fn: the network's `apply`.
    total_steps: K of the curriculum (static).
    mesh: the device mesh (OT groups are paired on the devices that hold
      them where they divide over the devices).

  Returns:
    The new state and a dict of scalar metrics (replicated).
  """
  ct = config.ct
  key = rng.key_at(config.seed, "train", state.step)
  key_noise, key_idx, key_drop = jax.random.split(key, 3)
  x0, labels = split_batch(batch)
  x0 = x0.astype(jnp.float32)
  noise = paired_noise(key_noise, x0, config.coupling, mesh)
  num = consistency.num_scales(
    state.step, total_steps, ct.start_scales, ct.end_scales
  )
  sigmas = consistency.karras_grid(
    num, ct.end_scales + 1, ct.sigma_min, ct.sigma_max, ct.rho
  )
  idx = consistency.sample_indices(key_idx, x0.shape[0], sigmas, num, ct)
  c = consistency.robust_c(num, ct, dim=x0[0].size)
  grad_fn = jax.value_and_grad(_ct_loss, has_aux=True)
  (loss, metrics), grads = grad_fn(
    state.params,
    apply_fn,
    x0,
    noise,
    idx,
    sigmas,
    num,
    c,
    key_drop,
    config,
    labels,
  )
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  tx = optim_lib.create_optimizer(config.optim)
  policy = config.train.nonfinite
  new_state = state.apply_gradients(tx, grads, finite, policy)
  lr = jnp.asarray(config.optim.lr, jnp.float32)
  if policy == "authors":
    lr = lr * state_lib.authors_lr_scale(state.nonfinite)
  metrics.update(
    loss=loss,
    grad_norm=grad_norm,
    num_scales=num.astype(jnp.float32),
    c=c,
    lr=lr,
    nonfinite=new_state.nonfinite.astype(jnp.float32),
  )
  return new_state, metrics


def compile_train_step(
  config: ml_collections.ConfigDict,
  mesh: Mesh,
  total_steps: int,
  state_sharding: PyTree | None = None,
) -> Callable[..., Any]:
  """jit(train_step) with donated state and explicit shardings.

  `state_sharding`: the state's sharding tree (`Setup.state_sharding`),
  needed on a mesh with an "fsdp" axis; None: every leaf replicated, one
  sharding as a pytree prefix (no trace of the state's init).
  """
  model = state_lib.create_model(config, mesh)
  replicated = parallel.replicated(mesh)
  if state_sharding is None:
    if parallel.fsdp_size(mesh) > 1:
      state_sharding = jax.tree.map(
        lambda a: a.sharding, state_lib.abstract_sharded_state(config, mesh)
      )
    else:
      state_sharding = replicated
  fn = functools.partial(
    train_step,
    config=config,
    apply_fn=model.apply,
    total_steps=total_steps,
    mesh=mesh,
  )
  return jax.jit(
    fn,
    donate_argnums=0,
    in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
    out_shardings=(state_sharding, replicated),
    compiler_options=model.kernels.compiler_options(),
  )


def compile_ahead(
  config: ml_collections.ConfigDict, mesh: Mesh, state, total_steps: int
) -> tuple[Any, float]:
  """(the step compiled for `state` and a config batch, compile seconds).

  `state` may be abstract (`state.abstract_sharded_state`): nothing is
  allocated. Called with other shapes, the compiled step raises.
  """
  fn = compile_train_step(
    config, mesh, total_steps, jax.tree.map(lambda a: a.sharding, state)
  )
  batch = abstract_batch(config, mesh)
  t0 = time.perf_counter()
  compiled = fn.lower(state, batch).compile()
  return compiled, time.perf_counter() - t0


def abstract_batch(config: ml_collections.ConfigDict, mesh: Mesh):
  """The global batch of `config` as ShapeDtypeStructs on `mesh`: x0, or
  (x0, labels) for a class-conditional model."""
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  sharding = parallel.batch_sharding(mesh)
  x = jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
  if config.model.get("num_classes", 0) > 0:
    y = jax.ShapeDtypeStruct(shape[:1], jnp.int32, sharding=sharding)
    return x, y
  return x
