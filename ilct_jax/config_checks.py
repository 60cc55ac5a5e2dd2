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
from ilct_jax.models import dit, norms


def check_names(config: ml_collections.ConfigDict) -> None:
  """Every name-valued field is one of its known choices."""
  losses.validate(config.ct.loss)
  consistency.validate(config.ct)
  coupling.validate(config.coupling.method)
  if config.coupling.group_size is not None:  # None: a legacy run's scope.
    coupling.group_count(config.train.batch_size, config.coupling.group_size)
  if config.model.get("arch", "unet") == "unet":
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
  check_model(config)
  if not 0.0 <= config.ct.diffusion_threshold <= 1.0:
    raise ValueError(
      f"ct.diffusion_threshold={config.ct.diffusion_threshold} must be in "
      "[0, 1]"
    )


def check_model(config: ml_collections.ConfigDict) -> None:
  """The network, its classes and guidance agree (ALGORITHM.md §20-21)."""
  m, s = config.model, config.sample
  arch = m.get("arch", "unet")
  choices.check("model.arch", arch, state_lib.ARCHS)
  if arch == "dit":
    choices.check("model.norm", m.norm, dit.NORMS)
    choices.check("model.dit.mlp", m.dit.mlp, dit.MLPS)
    dit.size(m.dit.size)
  classes = m.get("num_classes", 0)
  if classes < 0 or (classes and arch != "dit"):
    raise ValueError(
      f"model.num_classes={classes}: class labels need model.arch=dit (the "
      "UNet is unconditional) and a count >= 0"
    )
  if not 0.0 <= m.get("label_dropout", 0.0) < 1.0:
    raise ValueError(f"model.label_dropout={m.label_dropout} must be in [0, 1)")
  scale = s.get("cfg_scale", 1.0)
  if scale != 1.0 and not (classes and m.label_dropout > 0):
    raise ValueError(
      f"sample.cfg_scale={scale} guides with the null label, which only a "
      "class-conditional model trained with label dropout has; set "
      "model.num_classes and model.label_dropout > 0, or sample.cfg_scale=1"
    )
  if s.get("label", -1) >= max(classes, 1) and classes:
    raise ValueError(
      f"sample.label={s.label} is not a class of model.num_classes={classes}"
      "; use 0..num_classes-1 or -1 (every class)"
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
  fsdp = config.train.get("fsdp", 1)
  if fsdp < 1 or nd % fsdp:
    raise ValueError(
      f"train.fsdp={fsdp} does not divide the {nd} devices; use a divisor "
      f"of {nd} (1 = a replicated state)"
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
