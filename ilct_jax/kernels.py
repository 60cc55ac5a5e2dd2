"""The kernel switch: the forms of a program's kernels, chosen by its target.

Every backend-dependent choice of ilct_jax is made here, once per program,
from the platform of the devices the program is compiled for (the mesh), not
from the host's default backend: a TPU program compiled on a CPU host
(`python -m ilct_jax.preflight`) gets the TPU forms.

The switch is `model.kernels.forms`: "auto" (the default) takes the row of
`AUTO` for the platform, "plain" the XLA formulas for every kernel, and
"cpu_tuned" the hand-written forms for every kernel (`FORMS`). Each kernel
also has its own field (`model.kernels.<name>`, "auto" = follow `forms`):

  conv       "cpu": the forms tuned for XLA:CPU (1x1 convolutions as channel
             GEMMs, 3x3 convolutions of small maps as im2col GEMMs, gradient
             copies held back to the backward pass; models/conv.py);
             "xla": `lax.conv_general_dilated` for every convolution.
  norm       "custom": the norms' hand-written backward (models/norms.py);
             "xla": the plain formula, differentiated by autodiff.
  attention  "custom": attention's backward that recomputes the weights
             (models/attention.py); "xla": the plain formula, autodiff.

plus the XLA compiler options of the train step (`compiler_options`) and the
dtype policy (params, norm statistics, loss, OT, optimizer and EMAs in
float32 everywhere; activations in `model.dtype`, which no platform
overrides). "auto" takes the row of `AUTO` for the platform. The CPU row was
measured by `python -m ilct_jax.benchmark` (docs/DESIGN.md, speed); the TPU
row by the compiled cost of each form (`python -m ilct_jax.preflight
--compare_kernels`, docs/DESIGN.md, kernels by target); the GPU row by the
temporaries of the same compiles for eight H100s.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from ilct_jax import choices

PLATFORMS = ("cpu", "gpu", "tpu")
CONV = ("cpu", "xla")
NORM = ("custom", "xla")
ATTENTION = ("custom", "xla")

# "auto" per platform. CPU: docs/DESIGN.md, speed (each form measured by the
# benchmark). TPU: the cheapest form of each kernel in the compiled CelebA
# paper step for a v4-8 (docs/DESIGN.md, kernels by target; per chip,
# float32, batch 128): conv "cpu" costs 352 GB of HBM traffic and 11.6 GiB of
# temporaries against "xla"'s 89 GB and 2.3 GiB; attention "xla" reads
# 0.5 GB less and holds 0.12 GiB less than "custom"; norm "xla" would save
# 0.13 GiB of temporaries but read 1.6 GB more per step, and the step is
# bound by HBM traffic, so norm stays "custom". GPU: by temporaries alone
# (XLA:GPU gives no bytes for a deviceless program), the same step for
# eight H100s: conv "cpu" +0.22 GiB, norm "xla" +0.01 GiB, attention "xla"
# -4.5 MB against "custom" (docs/DESIGN.md, kernels by target).
AUTO = {
  "cpu": {"conv": "cpu", "norm": "custom", "attention": "custom"},
  "tpu": {"conv": "xla", "norm": "custom", "attention": "xla"},
  "gpu": {"conv": "xla", "norm": "custom", "attention": "xla"},
}

# XLA:CPU: let YNNPACK take reductions and single dots (fusion kinds beyond
# the default). Measured by `python -m ilct_jax.benchmark` on the paper
# step at batch 8 (2 cores, one process, interleaved): 4.50 -> 4.16 s per
# step, bit-identical loss. oneDNN, other YNN/XNN kinds, fast math and
# 512-bit vectors gained nothing beyond noise and are not set. GPU and TPU
# keep XLA's defaults.
CPU_COMPILER_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": (
    "LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
  ),
}


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The forms one program's kernels take (hashable: a Flax attribute).

  Attributes:
    platform: "cpu", "gpu" or "tpu": the target the choices were made for.
    conv: one of CONV.
    norm: one of NORM.
    attention: one of ATTENTION.
  """

  platform: str = "cpu"
  conv: str = "cpu"
  norm: str = "custom"
  attention: str = "custom"

  def compiler_options(self) -> dict[str, str] | None:
    """`jax.jit(..., compiler_options=...)` of the train step."""
    return dict(CPU_COMPILER_OPTIONS) if self.platform == "cpu" else None

  def describe(self) -> str:
    """'tpu: conv=xla norm=custom attention=custom' for logs and tables."""
    return (
      f"{self.platform}: conv={self.conv} norm={self.norm} "
      f"attention={self.attention}"
    )


Target = Mesh | Sequence[Any] | str | None


def platform_of(target: Target = None) -> str:
  """The platform a program for `target` runs on: "cpu", "gpu" or "tpu".

  Args:
    target: a Mesh, a sequence of devices (compile-only TPU devices of a
      topology included), a platform name, or None for the devices that
      `parallel.make_mesh()` would use (`jax.devices()`).
  """
  if isinstance(target, str):
    name = target
  else:
    if target is None:
      devices = jax.devices()
    elif isinstance(target, Mesh):
      devices = list(target.devices.flat)
    else:
      devices = list(target)
    if not devices:
      raise ValueError("cannot choose kernels for an empty device list")
    name = devices[0].platform
  name = {"cuda": "gpu", "rocm": "gpu"}.get(name.lower(), name.lower())
  if name not in PLATFORMS:
    raise ValueError(
      f"unknown platform {name!r}; ilct_jax chooses kernels for {PLATFORMS}"
    )
  return name


# `model.kernels.forms`, the one switch over all three: "auto" takes each
# kernel's row of AUTO for the platform; "plain" the XLA formulas everywhere
# (the forms every other is tested against); "cpu_tuned" the hand-written
# forms everywhere. A kernel's own field, when not "auto", overrides it.
FORMS = {
  "plain": {"conv": "xla", "norm": "xla", "attention": "xla"},
  "cpu_tuned": {"conv": "cpu", "norm": "custom", "attention": "custom"},
}


def _field(config: ml_collections.ConfigDict | None, name: str) -> str:
  return "auto" if config is None else str(config.kernels[name])


def select(
  model_config: ml_collections.ConfigDict | None, target: Target = None
) -> Kernels:
  """The kernels of a program for `target`: `model.kernels`, "auto" resolved.

  Args:
    model_config: the `model` config group (None: every kernel "auto").
    target: what `platform_of` takes.

  Raises:
    ValueError: a `model.kernels` value that is not a known form.
  """
  platform = platform_of(target)
  forms = _field(model_config, "forms")
  choices.check("model.kernels.forms", forms, ("auto", *FORMS))
  row = AUTO[platform] if forms == "auto" else FORMS[forms]
  picked = {}
  for name, allowed in (
    ("conv", CONV),
    ("norm", NORM),
    ("attention", ATTENTION),
  ):
    value = _field(model_config, name)
    choices.check(f"model.kernels.{name}", value, ("auto", *allowed))
    picked[name] = row[name] if value == "auto" else value
  return Kernels(platform=platform, **picked)
