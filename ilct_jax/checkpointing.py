"""Checkpoints of a run: verified saves, verified restores, opening a workdir.

Layout (local or gs://, through orbax and storage.py):

  WORKDIR/config.json                 the resolved config of the run
  WORKDIR/checkpoints/<step>/state    the TrainState (orbax StandardSave)
  WORKDIR/checkpoints/<step>/meta     JSON: the run facts that must not change
                                      on resume, and a checksum of every array
  WORKDIR/damaged_checkpoints/<step>  steps that failed verification

Saves refuse a state with non-finite parameters, EMAs or optimizer state, and
record two 32-bit sums of each array's raw bits (`checksums`). A restore tries
the newest step first and verifies it: its arrays must read, their checksums
must match and every value must be finite. A step that fails is damaged: it is
moved aside (never deleted) with one warning line and the previous step is
tried. Only a difference in the tree or shapes against the current config is
reported as a config change (CheckpointMismatchError). Every process calls
save and restore (orbax coordinates the hosts); process 0 moves damaged steps.

Opening a run from its workdir alone (config.json, then a part of a step) is
`runs.load_run`.
"""

import dataclasses
import logging as logging_std
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers as cm

from ilct_jax import faults, integrity, parallel, storage

PyTree = Any
CHECKPOINTS = "checkpoints"
DAMAGED = "damaged_checkpoints"


class _QuietOrbax(logging_std.Filter):
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno > logging_std.INFO or "orbax" not in record.pathname


def quiet_orbax_logs() -> None:
  """Hides orbax's INFO lines in the absl log (programs call it once)."""
  logging.get_absl_handler().addFilter(_QuietOrbax())


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir was written for a different config."""


class CheckpointDamagedError(RuntimeError):
  """No checkpoint of the requested step(s) passes verification."""


@dataclasses.dataclass
class StepsFrom(cm.PreservationPolicy):
  """Keeps every checkpoint at or after `first_step` (the selection window)."""

  first_step: int

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    return [c.step >= self.first_step for c in checkpoints]


def window_start(
  train: ml_collections.ConfigDict, total_steps: int, num_examples: int
) -> int | None:
  """First step of the last `train.keep_last_epochs` epochs (None: off).

  The paper picks its checkpoint among the last 100 epochs (docs/ALGORITHM.md
  §13), so the paper configs keep every checkpoint from there on.
  """
  epochs = train.keep_last_epochs
  if epochs <= 0:
    return None
  per_epoch = max(num_examples // train.batch_size, 1)
  return max(total_steps - epochs * per_epoch, 0)


def create_manager(
  workdir: str,
  train: ml_collections.ConfigDict,
  *,
  read_only: bool = False,
  keep_from: int | None = None,
) -> ocp.CheckpointManager:
  """The run's CheckpointManager: keep-N, every `keep_every` steps, and
  every checkpoint from `keep_from` on (`window_start`)."""
  keep = [cm.LatestN(max(train.keep, 1))]
  if train.keep_every > 0:
    keep.append(cm.EveryNSteps(train.keep_every))
  if keep_from is not None:
    keep.append(StepsFrom(keep_from))
  options = ocp.CheckpointManagerOptions(
    save_decision_policy=cm.FixedIntervalPolicy(max(train.ckpt_every, 1)),
    preservation_policy=cm.AnyPreservationPolicy(keep),
    enable_async_checkpointing=True,
    read_only=read_only,
    create=not read_only,
    cleanup_tmp_directories=not read_only,
  )
  directory = storage.path(storage.join(workdir, CHECKPOINTS))
  return ocp.CheckpointManager(directory, options=options)


# ------------------------------------------------------------ save


def save(
  mngr: ocp.CheckpointManager,
  state: PyTree,
  meta: dict[str, Any],
  *,
  step: int,
  force: bool = False,
) -> bool:
  """Saves `state` at `step` if the policy (or `force`) says so.

  Returns:
    Whether a save was started. Refuses (FloatingPointError) a state whose
    params, EMAs or optimizer state are not finite, so a good checkpoint is
    never followed by a bad one.
  """
  # `step` is a Python int so the (frequent) no-save path never syncs with
  # the device.
  if not force and not mngr.should_save(step):
    return False
  if step in mngr.all_steps():
    return False
  if not integrity.all_finite(
    (state.params, state.ema_params, state.opt_state)
  ):
    raise FloatingPointError(
      f"refusing to checkpoint step {step}: the parameters, EMAs or optimizer"
      f" state are not finite; the last checkpoint is step "
      f"{mngr.latest_step()}"
    )
  meta = dict(meta, checksums=integrity.checksums(state))
  return mngr.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
    ),
    force=True,
  )


def check_meta(saved: dict[str, Any], current: dict[str, Any]) -> None:
  """Raises CheckpointMismatchError naming every run fact that differs."""
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


# ------------------------------------------------------------ restore


def step_dir(mngr: ocp.CheckpointManager, step: int):
  return mngr.directory / str(step)


def _saved_shapes(mngr, step: int) -> dict[str, tuple[int, ...]]:
  """{path: shape} of the saved state (raises if its metadata is damaged)."""
  checkpointer = ocp.StandardCheckpointer()
  try:
    md = checkpointer.metadata(step_dir(mngr, step) / "state")
  finally:
    checkpointer.close()
  tree = getattr(getattr(md, "item_metadata", md), "tree", None)
  if tree is None:
    raise ValueError("no tree in the state metadata")
  return {p: tuple(x.shape) for p, x in integrity.leaf_paths(tree)}


def check_tree(mngr, step: int, target: PyTree, config) -> None:
  """CheckpointMismatchError if the saved tree or shapes differ from target.

  Raises other errors (to be treated as damage) if the metadata is unreadable.
  """
  saved = _saved_shapes(mngr, step)
  wanted = {p: tuple(x.shape) for p, x in integrity.leaf_paths(target)}
  diffs = [f"{p} is missing" for p in wanted if p not in saved]
  diffs += [f"{p} is not in this config" for p in saved if p not in wanted]
  diffs += [
    f"{p}: checkpoint {saved[p]} vs config {s}"
    for p, s in wanted.items()
    if p in saved and saved[p] != s
  ]
  if diffs:
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    raise CheckpointMismatchError(
      f"checkpoint step {step} in {mngr.directory} was written by another "
      f"model/ema/optim config: {'; '.join(diffs[:3])}{more}; use a new "
      "--workdir or the original config (--mode=sample/eval read the run's "
      f"config.json when --config is not given)"
    )
  del config


def _move_aside(mngr: ocp.CheckpointManager, step: int, why: str) -> None:
  """Moves a damaged step to WORKDIR/damaged_checkpoints (process 0)."""
  src = step_dir(mngr, step)
  root = mngr.directory.parent / DAMAGED
  dst, k = root / str(step), 1
  if jax.process_index() == 0:
    while dst.exists():
      dst, k = root / f"{step}-{k}", k + 1
    storage.move_tree(src, dst)
    logging.warning(
      "Checkpoint step %d is damaged (%s): moved to %s; trying the previous "
      "step",
      step,
      why,
      dst,
    )
  parallel.sync(f"ilct_move_damaged_{step}")
  mngr.reload()


def _restore_one(mngr, step: int, abstract: PyTree) -> tuple[PyTree, dict]:
  out = mngr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
    ),
  )
  return out.state, dict(out.meta)


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _candidates(mngr, step: int | None) -> list[int]:
  """The steps to try, newest first (only `step` when one is asked for)."""
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(
      f"no checkpoint under {mngr.directory}; train first (--mode=train)"
    )
  if step is None:
    return steps
  if step not in steps:
    raise FileNotFoundError(
      f"checkpoint step {step} not found under {mngr.directory}; "
      f"available: {sorted(steps)}"
    )
  return [step]


def _try_restore(mngr, step: int, abstract, config):
  """(state, meta, None) if `step` passes verification, else (.., why)."""
  try:
    check_tree(mngr, step, abstract, config)
    state, meta = _restore_one(mngr, step, abstract)
    return state, meta, integrity.verify(state, meta.get("checksums"))
  except CheckpointMismatchError:
    raise
  except Exception as e:  # noqa: BLE001 - a read failure is damage ...
    if faults.is_transient(e):  # ... unless a peer, the disk or the store
      raise  # failed: the checkpoint may be good (tests/chaos.py).
    return None, None, _first_line(e)


def restore(
  mngr: ocp.CheckpointManager,
  config: ml_collections.ConfigDict,
  target: PyTree,
  step: int | None = None,
) -> tuple[PyTree, dict[str, Any]]:
  """Restores and verifies a state into the shardings of `target`.

  Args:
    mngr: the manager.
    config: the current config (names the fix of a mismatch).
    target: abstract (or concrete) state whose tree, shapes and shardings the
      checkpoint is restored into.
    step: a step to restore; None = the newest one that passes verification.

  Returns:
    (state, meta).

  Raises:
    FileNotFoundError: no checkpoint (or not that step).
    CheckpointMismatchError: the saved tree/shapes differ from `target`.
    CheckpointDamagedError: the requested step, or every step, is damaged.
  """
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    target,
  )
  read_only = mngr._options.read_only  # noqa: SLF001 - no public getter.
  for s in _candidates(mngr, step):
    state, meta, why = _try_restore(mngr, s, abstract, config)
    if why is None:
      logging.info("Restored checkpoint step %d from %s", s, mngr.directory)
      return state, meta
    if step is not None:
      raise CheckpointDamagedError(
        f"checkpoint step {s} in {mngr.directory} is damaged ({why}); "
        "evaluate another step or the latest one"
      )
    if read_only:
      logging.warning("Checkpoint step %d is damaged (%s): skipped", s, why)
    else:
      _move_aside(mngr, s, why)
  raise CheckpointDamagedError(
    f"every checkpoint under {mngr.directory} is damaged (moved to "
    f"{mngr.directory.parent / DAMAGED} unless read-only); the run cannot "
    "resume: start a new --workdir or put back a good copy"
  )
