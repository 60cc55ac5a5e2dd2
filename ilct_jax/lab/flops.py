"""FLOP and memory accounting for the benchmark (no timing loop here).

Owns:
  * `matmul_flops(fn, *args)`: an analytic count of a function's FLOPs from
    its jaxpr, counting the convolutions and dot products (2 FLOPs per
    multiply-add) and nothing else, so it is independent of the compiler;
  * `train_step_flops_per_example`: the train step's model FLOPs per example,
    student forward + backward (2x the forward: the input and the weight
    gradients each cost one forward) + teacher forward = 4 forwards;
  * `PEAK_TFLOPS` / `peak_flops(device, dtype)`: the dense peak of a device
    kind, from the vendors' datasheets, and a CPU estimate;
  * what XLA says of a compiled train step (`step_accounting`: its FLOPs and
    per-device memory; `memory_estimate`: the same compiled against an
    abstract state, nothing allocated), MFU of a measured step, and the
    projected wall time of each paper run (`project_paper_runs`).

MFU = model FLOPs per second / peak FLOP/s (model FLOPs, not what the
compiler executes: rematerialization or padding do not raise it).
"""

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ilct_jax import setup as setup_lib
from ilct_jax import state as state_lib
from ilct_jax import train
from ilct_jax.lab import run_files

# Dense (no sparsity) peak TFLOP/s per chip by matmul dtype. "float32" is
# what a float32 matmul runs at under JAX's default precision: TF32 tensor
# cores on NVIDIA (A100 and later), one bf16 pass on TPU. Sources: NVIDIA
# A100 / H100 / H200 datasheets (SXM), Google Cloud TPU system-architecture
# pages (v4, v5e, v5p, v6e).
PEAK_TFLOPS: dict[str, dict[str, float]] = {
  "A100": {"float32": 156.0, "bfloat16": 312.0},
  "H100": {"float32": 494.7, "bfloat16": 989.4},
  "H200": {"float32": 494.7, "bfloat16": 989.4},
  "TPU v4": {"float32": 275.0, "bfloat16": 275.0},
  "TPU v5 lite": {"float32": 197.0, "bfloat16": 197.0},
  "TPU v5p": {"float32": 459.0, "bfloat16": 459.0},
  "TPU v5": {"float32": 459.0, "bfloat16": 459.0},
  "TPU v6 lite": {"float32": 918.0, "bfloat16": 918.0},
}


def _flops_of_eqn(eqn: Any) -> float:
  name = eqn.primitive.name
  out = eqn.outvars[0].aval
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    k = np.prod([lhs.shape[d] for d in lhs_contract], dtype=np.float64)
    return 2.0 * np.prod(out.shape, dtype=np.float64) * k
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval
    out_dim = eqn.params["dimension_numbers"].rhs_spec[0]
    per_output = np.prod(rhs.shape, dtype=np.float64) / rhs.shape[out_dim]
    return 2.0 * np.prod(out.shape, dtype=np.float64) * per_output
  return 0.0


def _sub_jaxprs(eqn: Any):
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def _count(jaxpr: Any) -> float:
  total = 0.0
  for eqn in jaxpr.eqns:
    total += _flops_of_eqn(eqn)
    for sub in _sub_jaxprs(eqn):
      total += _count(sub)
  return total


def matmul_flops(fn: Callable[..., Any], *args: Any) -> float:
  """FLOPs of the convolutions and dot products `fn(*args)` traces.

  Args may be arrays or `jax.ShapeDtypeStruct`s (nothing is computed).
  Calls and custom-derivative wrappers are followed into; a loop body
  would be counted once (the UNet and the train step have none).
  """
  return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def forward_flops_per_example(model: Any, example_shape: tuple) -> float:
  """Model FLOPs of one forward of one example (batch 1, no compute)."""
  x = jax.ShapeDtypeStruct((1, *example_shape), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.float32)
  params = jax.eval_shape(
    lambda x, n: model.init(jax.random.key(0), x, n, train=False)["params"],
    x,
    labels,
  )
  apply = lambda p, x, n: model.apply({"params": p}, x, n, train=False)
  return matmul_flops(apply, params, x, labels)


def train_step_flops_per_example(model: Any, example_shape: tuple) -> float:
  """4 forwards: student forward + backward (2 forwards) + teacher forward."""
  return 4.0 * forward_flops_per_example(model, example_shape)


def _cpu_peak() -> tuple[float, str]:
  """cores x clock x FLOP/cycle: 2 FMA pipes x SIMD lanes x 2 FLOP."""
  cores = len(os.sched_getaffinity(0))
  ghz, flags = 2.0, ""
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
    mhz = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
    ghz = float(mhz.group(1)) / 1e3 if mhz else ghz
    found = re.search(r"^flags\s*:(.*)$", info, re.M)
    flags = found.group(1) if found else ""
  except OSError:
    pass
  lanes = 16 if " avx512f" in flags else 8 if " avx2" in flags else 4
  per_cycle = 2 * lanes * 2
  how = f"{cores} cores x {ghz:.2f} GHz x {per_cycle} float32 FLOP/cycle"
  return cores * ghz * 1e9 * per_cycle, how


def peak_flops(device: Any, dtype: str) -> tuple[float, str]:
  """(dense peak FLOP/s of one device for `dtype` matmuls, its source).

  NaN with a reason for a device kind not in PEAK_TFLOPS. CPU: an estimate
  from /proc/cpuinfo (the cores this process may use, the current clock,
  2 FMA units of the widest float32 SIMD), an upper bound XLA:CPU's
  convolutions do not reach.
  """
  if device.platform == "cpu":
    return _cpu_peak()
  kind = device.device_kind
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if name in kind:
      return PEAK_TFLOPS[name][dtype] * 1e12, f"{name} datasheet, {dtype}"
  return float("nan"), f"no peak known for device kind {kind!r}"


def xla_cost(compiled: Any) -> dict[str, float]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost or {}


def step_accounting(
  config: ml_collections.ConfigDict, compiled: Any, num_devices: int
) -> dict:
  """FLOPs and memory of a compiled train step (nothing is run).

  `model_gflop_per_image` is the analytic count (4 forwards of the UNet's
  convolutions and matmuls); `xla_gflop_per_step` is XLA's cost analysis
  of the compiled SPMD program, which is one device's share, times
  `num_devices` (work replicated on every device counts on each). Memory
  is XLA's buffer
  assignment for one device: arguments (state + batch), temporaries and
  the peak of the two plus outputs not aliased to donated inputs.
  """
  model = state_lib.create_model(config)
  per_image = train_step_flops_per_example(
    model, state_lib.example_shape(config)
  )
  mem = compiled.memory_analysis()
  out = {
    "model_gflop_per_image": per_image / 1e9,
    "model_gflop_per_step": per_image * config.train.batch_size / 1e9,
    "xla_gflop_per_step": (
      xla_cost(compiled).get("flops", float("nan")) * num_devices / 1e9
    ),
  }
  if mem is not None:
    args, temp = mem.argument_size_in_bytes, mem.temp_size_in_bytes
    extra = mem.output_size_in_bytes - mem.alias_size_in_bytes
    out.update(
      args_mib=args / 2**20,
      temp_mib=temp / 2**20,
      device_peak_gib=(args + temp + max(extra, 0)) / 2**30,
    )
  return out


def mfu(config: ml_collections.ConfigDict, figures: dict) -> dict:
  """Achieved model FLOP/s and MFU over all devices of the run."""
  device = jax.devices()[0]
  peak, source = peak_flops(device, config.model.dtype)
  achieved = figures["model_gflop_per_step"] * 1e9 / figures["step_s"]
  peak_all = peak * jax.device_count()
  print(f"# peak: {peak / 1e12:.3g} TFLOP/s per device ({source})")
  return {
    "achieved_tflop_per_s": achieved / 1e12,
    "peak_tflop_per_s": peak_all / 1e12,
    "mfu": achieved / peak_all,
  }


def memory_estimate(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The train step's compiled memory on this backend, nothing allocated.

  Lowers the step against the abstract state (jax.eval_shape) and an
  abstract batch, compiles it and reads XLA's memory analysis and cost
  analysis: the figure an accelerator of the same backend would need per
  device, known before any array exists.
  """
  setup = setup_lib.build(config)
  steps = max(config.train.num_steps, 1)
  step = train.compile_step(  # As training does.
    config, setup.mesh, setup.abstract_state, steps
  )
  figures = {"compile_s": step.stats["compile_seconds"]}
  figures.update(step_accounting(config, step.compiled, setup.mesh.size))
  figures["remat"] = float(config.model.remat)
  return figures


# The paper's runs (ALGORITHM.md §13): config file and training-set size
# (CelebA-HQ 27k train split; LSUN Church 126,227 images doubled by flips;
# FFHQ 70k).
PAPER_RUNS = {
  "celeba": ("celeba.py", 27_000),
  "lsun_church": ("lsun_church.py", 2 * 126_227),
  "ffhq": ("ffhq.py", 70_000),
}


def project_paper_runs(achieved_flops: float) -> dict[str, dict]:
  """Wall time of each paper run at `achieved_flops` model FLOP/s.

  steps = (examples // batch) * epochs (train.total_steps); seconds =
  steps * batch * model FLOPs per example / achieved FLOP/s, i.e. steps /
  (steps/s) if the paper batch ran at the measured FLOP rate.
  """
  root = Path(__file__).resolve().parents[2] / "configs"
  rows = {}
  for name, (file, examples) in PAPER_RUNS.items():
    config = run_files.load_config_file(str(root / file))
    steps = train.total_steps(config, examples)
    per_image = train_step_flops_per_example(
      state_lib.create_model(config), state_lib.example_shape(config)
    )
    step_s = config.train.batch_size * per_image / achieved_flops
    rows[name] = {
      "global_batch": float(config.train.batch_size),
      "steps": float(steps),
      "steps_per_s": 1.0 / step_s,
      "days": steps * step_s / 86400.0,
    }
  return rows
