"""Opening a run from its workdir: config.json, then a verified restore.

`load_run(workdir)` reads the run's config (laid over today's defaults by
`run_config.read_config`) and restores the whole TrainState, the online
parameters or one EMA into an abstract target, verified against the step's
checksums (checkpointing.py owns saving, verifying and damaged steps). Sample,
eval, the sweep, inspect_run and the notebook open runs through it.
"""

import dataclasses
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from ilct_jax import checkpointing, choices, integrity, parallel, run_config
from ilct_jax import state as state_lib

PyTree = Any
WHAT = ("state", "params", "ema")


@dataclasses.dataclass
class Run:
  """An opened run: its config, the restored step and what was restored.

  Attributes:
    config: the run's config (from config.json unless one was passed).
    step: the checkpoint step.
    meta: the checkpoint's run facts.
    state: the whole TrainState (what="state"), else None.
    params: the parameters asked for (what="params" or "ema"), else None.
  """

  config: ml_collections.ConfigDict
  step: int
  meta: dict[str, Any]
  state: state_lib.TrainState | None = None
  params: PyTree | None = None


def _partial_restore(mngr, step: int, target: dict) -> PyTree:
  """Restores only the subtrees of `target` (e.g. {"params": ...})."""
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    return checkpointer.restore(
      checkpointing.step_dir(mngr, step) / "state",
      args=ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
      ),
    )
  finally:
    checkpointer.close()


def _ema_index(config: ml_collections.ConfigDict, decay: float) -> int:
  decays = [float(d) for d in config.ema.decays]
  for i, d in enumerate(decays):
    if abs(d - decay) < 1e-12:
      return i
  raise ValueError(
    f"EMA decay {decay} is not tracked by this run (ema.decays={decays}); "
    "choose one of them (0 = the online parameters)"
  )


def _load_part(mngr, config, step, what, decay, abstract):
  """(params tree, meta) of `what` at `step`, verified."""
  if what == "params" or decay == 0:
    target = {"params": abstract.params}
  else:
    target = {"ema_params": list(abstract.ema_params)}
  meta = dict(
    mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
      "meta"
    ]
  )
  restored = _partial_restore(mngr, step, target)
  why = integrity.verify(restored, meta.get("checksums"))
  if why is not None:
    raise checkpointing.CheckpointDamagedError(
      f"checkpoint step {step} in {mngr.directory} is damaged ({why})"
    )
  if "params" in target:
    return restored["params"], meta
  return restored["ema_params"][_ema_index(config, decay)], meta


def load_run(
  workdir: str,
  *,
  config: ml_collections.ConfigDict | None = None,
  step: int | None = None,
  what: str = "state",
  ema_decay: float | None = None,
  mesh: jax.sharding.Mesh | None = None,
  abstract: state_lib.TrainState | None = None,
) -> Run:
  """Opens a run from its workdir: config, then a verified abstract restore.

  Args:
    workdir: the run directory (local or gs://).
    config: use this config instead of WORKDIR/config.json.
    step: checkpoint step (None: the newest step that passes verification).
    what: "state" (the whole TrainState), "params" (online parameters) or
      "ema" (the EMA of `ema_decay`; 0 means the online parameters).
    ema_decay: for what="ema" (default: the config's sample.ema_decay).
    mesh: devices to place the result on (default: all present devices,
      replicated). Works on any device count: checkpoints are
      topology-independent.
    abstract: the restore target on `mesh` (`Setup.abstract_state`); None
      traces it here.

  Returns:
    A Run. Nothing is initialised or compiled to build the target.
  """
  choices.check("what", what, WHAT)
  config = run_config.read_config(workdir) if config is None else config
  if abstract is None:  # One trace of the init.
    mesh = parallel.make_mesh() if mesh is None else mesh
    abstract = state_lib.abstract_sharded_state(config, mesh)
  mngr = checkpointing.create_manager(workdir, config.train, read_only=True)
  try:
    if what == "state":
      state, meta = checkpointing.restore(mngr, config, abstract, step)
      return Run(config, int(jax.device_get(state.step)), meta, state=state)
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise FileNotFoundError(
        f"no checkpoint step {step} under {mngr.directory} (available: "
        f"{sorted(mngr.all_steps())}); train first or pick another step"
      )
    checkpointing.check_tree(mngr, step, abstract, config)
    decay = config.sample.ema_decay if ema_decay is None else ema_decay
    params, meta = _load_part(mngr, config, step, what, decay, abstract)
    return Run(config, step, meta, params=params)
  finally:
    mngr.close()
