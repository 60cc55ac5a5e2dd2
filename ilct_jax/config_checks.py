"""Up-front validation of a config: one-line errors that name the fix.

Everything a run would otherwise discover minutes (or hours) later is checked
here before any compile: unknown technique names, a global batch that does not
divide over the devices or processes, an unwritable workdir.
"""

import jax
import ml_collections

from ilct_jax import choices, consistency, coupling, losses, optim, storage
from ilct_jax import state as state_lib
from ilct_jax.data import latents
from ilct_jax.models import norms


def check_names(config: ml_collections.ConfigDict) -> None:
  """Every name-valued field is one of its known choices."""
  losses.validate(config.ct.loss)
  consistency.validate(config.ct)
  coupling.validate(config.coupling.method)
  if config.coupling.group_size is not None:  # None: a legacy run's scope.
    coupling.group_count(config.train.batch_size, config.coupling.group_size)
  choices.check("model.norm", config.model.norm, norms.NORMS)
  choices.check("optim.name", config.optim.name, optim.OPTIMIZERS)
  choices.check(
    "data.bad_records", config.data.bad_records, latents.BAD_RECORDS
  )
  choices.check(
    "train.nonfinite",
    config.train.nonfinite,
    state_lib.NONFINITE_POLICIES,
  )
  if not 0.0 <= config.ct.diffusion_threshold <= 1.0:
    raise ValueError(
      f"ct.diffusion_threshold={config.ct.diffusion_threshold} must be in "
      "[0, 1]"
    )


def check_batch(
  config: ml_collections.ConfigDict,
  num_devices: int | None = None,
  num_processes: int | None = None,
) -> None:
  """The global batch divides over devices and processes."""
  bs = config.train.batch_size
  nd = jax.device_count() if num_devices is None else num_devices
  npr = jax.process_count() if num_processes is None else num_processes
  if bs <= 0 or bs % nd:
    raise ValueError(
      f"train.batch_size={bs} does not divide over {nd} devices; use a "
      f"multiple of {nd} (e.g. {max(nd, bs // nd * nd)})"
    )
  if bs % npr:
    raise ValueError(
      f"train.batch_size={bs} does not divide over {npr} processes; use a "
      f"multiple of {npr}"
    )


def check_workdir(workdir: str) -> None:
  """The workdir exists (or can be created) and is writable (any store)."""
  if not workdir:
    raise ValueError("--workdir is required: a directory for checkpoints/logs")
  probe = storage.join(workdir, f".write_probe_{jax.process_index()}")
  try:
    storage.makedirs(workdir)
    storage.write_bytes(probe, b"ok")
    storage.path(probe).unlink()
  except OSError as e:
    why = e.strerror or str(e).splitlines()[0]
    raise PermissionError(
      f"workdir {workdir!r} is not writable ({why}); pass a writable --workdir"
    ) from e


def check_all(
  config: ml_collections.ConfigDict,
  workdir: str,
  num_devices: int | None = None,
) -> None:
  """Runs every check (names, batch over `num_devices`, workdir)."""
  check_names(config)
  check_batch(config, num_devices=num_devices)
  check_workdir(workdir)
