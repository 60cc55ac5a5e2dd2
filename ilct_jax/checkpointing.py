"""Orbax checkpoints: one manager per workdir, async saves, resume by default.

Layout: `workdir/checkpoints/<step>/{state,meta}`. `state` is the TrainState
pytree (StandardSave); `meta` is JSON with the run facts that must not change
on resume (total steps, number of examples, example shape). Every process
calls save/restore (orbax coordinates hosts). A state with non-finite
parameters is never written, and orbax's write-to-temporary-then-rename keeps
an interrupted save from replacing a good checkpoint.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as cm

from ilct_jax import state as state_lib


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir does not fit the current config."""


def create_manager(
  workdir: str, train: ml_collections.ConfigDict, *, read_only: bool = False
) -> ocp.CheckpointManager:
  """The run's CheckpointManager (keep-N plus every `keep_every` steps)."""
  keep = [cm.LatestN(max(train.keep, 1))]
  if train.keep_every > 0:
    keep.append(cm.EveryNSteps(train.keep_every))
  options = ocp.CheckpointManagerOptions(
    save_decision_policy=cm.AnySavePolicy(
      [
        cm.FixedIntervalPolicy(max(train.ckpt_every, 1)),
        cm.PreemptionCheckpointingPolicy(),
      ]
    ),
    preservation_policy=cm.AnyPreservationPolicy(keep),
    enable_async_checkpointing=True,
    read_only=read_only,
    create=not read_only,
  )
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  return ocp.CheckpointManager(path, options=options)


def _all_finite(tree: Any) -> bool:
  leaves = [
    x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  ok = jax.jit(
    lambda ls: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in ls]))
  )
  return bool(ok(leaves)) if leaves else True


def save(
  mngr: ocp.CheckpointManager,
  state: state_lib.TrainState,
  meta: dict[str, Any],
  *,
  step: int,
  force: bool = False,
) -> bool:
  """Saves `state` at its step if the policy (or `force`) says so.

  Returns:
    Whether a save was started. Refuses (with an error) a state whose params
    or EMAs are not finite, so a good checkpoint is never followed by a bad one.
  """
  # `step` is passed as a Python int so that the (frequent) no-save path
  # never syncs with the device.
  if not force and not mngr.should_save(step):
    return False
  if step in mngr.all_steps():
    return False
  if not _all_finite((state.params, state.ema_params)):
    raise FloatingPointError(
      f"refusing to checkpoint step {step}: parameters are not finite; the "
      f"last good checkpoint is step {mngr.latest_step()}"
    )
  return mngr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
    ),
    force=True,
  )


def check_meta(saved: dict[str, Any], current: dict[str, Any]) -> None:
  """Raises CheckpointMismatchError naming every field that differs."""
  diffs = [
    f"{k}: checkpoint {saved.get(k)!r} vs config {v!r}"
    for k, v in current.items()
    if k in saved and saved[k] != v
  ]
  if diffs:
    raise CheckpointMismatchError(
      "the checkpoint in the workdir was written for a different run ("
      + "; ".join(diffs)
      + "); use a new --workdir or restore the original config"
    )


def restore(
  mngr: ocp.CheckpointManager,
  config: ml_collections.ConfigDict,
  target: state_lib.TrainState,
  step: int | None = None,
) -> tuple[state_lib.TrainState, dict[str, Any]]:
  """Restores into the sharding of `target` (an abstract or concrete state).

  Args:
    mngr: the manager.
    config: the current config (to name mismatches).
    target: state whose structure, shapes and shardings are restored into.
    step: which step (default: the latest).

  Returns:
    (state, meta).
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(
      f"no checkpoint under {mngr.directory}; train first (--mode=train)"
    )
  if step not in mngr.all_steps():
    raise FileNotFoundError(
      f"checkpoint step {step} not found under {mngr.directory}; available: "
      f"{sorted(mngr.all_steps())}"
    )
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    target,
  )
  try:
    out = mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointMismatchError(
      f"checkpoint step {step} in {mngr.directory} does not match the model "
      f"of this config (model/ema/optim fields changed?): {str(e)[:300]}; "
      "use a new --workdir or the original config"
    ) from e
  logging.info("Restored checkpoint step %d from %s", step, mngr.directory)
  del config
  return out.state, dict(out.meta)
