"""One-shot accelerator check: correctness on the device, then speed figures.

  python tools/device_check.py            # paper config, batch 128, f32+bf16
  python tools/device_check.py --small    # tiny config (CI runs this on CPU)

Run it through tools/device_check.sh on a fresh GPU/TPU machine (it installs
what the image lacks first). On whatever devices JAX sees, it checks:

  compiles      the train step compiles once across a curriculum stage change
  exact OT      the on-device Hungarian pairing reaches scipy's optimum
  1 vs n        one train step on 1 device and on all devices agree

and then times the train step of the config in float32 and bfloat16
(`benchmark.time_train_step`: steps/s, images/s, init and compile seconds,
model and XLA FLOPs, MFU, OT share, memory), the OT pairing at 128 to 4096
examples, the step's compiled memory with and without model.remat, and the
fused FID program's images/s, each as one table. Exits 1 if a check fails.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ilct_jax import coupling, parallel  # noqa: E402
from ilct_jax import state as state_lib  # noqa: E402
from ilct_jax import step as step_lib  # noqa: E402
from ilct_jax.lab import bench_parts, benchmark, flops  # noqa: E402


def _config(small: bool, batch: int | None):
  from configs import celeba, tiny

  config = tiny.get_config() if small else celeba.get_config()
  n = jax.device_count()
  default = 16 if small else 128
  config.train.batch_size = batch or max(default // n, 1) * n
  config.train.num_steps = 1000
  return config


def _time_step(config, dtype: str, steps: int) -> dict:
  c = config.copy_and_resolve_references()
  c.model.dtype = dtype
  return benchmark.time_train_step(c, steps, warmup=2)


def check_exact_ot(batch: int, dim: int) -> tuple[bool, str]:
  from scipy.optimize import linear_sum_assignment

  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch, dim)).astype(np.float32)
  z = rng.standard_normal((batch, dim)).astype(np.float32)
  perm = np.asarray(
    jax.jit(coupling.assignment, static_argnames="method")(
      jnp.asarray(x), jnp.asarray(z), method="exact"
    )
  )
  cost = ((x[:, None, :].astype(np.float64) - z[None]) ** 2).sum(-1)
  rows, cols = linear_sum_assignment(cost)
  ours, best = cost[np.arange(batch), perm].sum(), cost[rows, cols].sum()
  ok = sorted(perm.tolist()) == list(range(batch)) and ours <= best * (1 + 1e-6)
  return ok, f"cost {ours:.6g} vs scipy {best:.6g} ({batch}x{dim})"


def check_one_compile(figures: dict) -> tuple[bool, str]:
  """One compile although the timed steps crossed a curriculum stage."""
  n0, n1 = figures["num_scales_start"], figures["num_scales_end"]
  ok = figures["compiles"] == 1 and n1 > n0
  return ok, f"{int(figures['compiles'])} compile(s) for N {n0:.0f} -> {n1:.0f}"


def check_one_vs_all_devices(config) -> tuple[bool, str]:
  devices = jax.devices()
  if len(devices) == 1:
    return True, "skipped: 1 device (needs 2 or more)"
  shape = (config.train.batch_size, *state_lib.example_shape(config))
  batch = np.random.default_rng(0).normal(0, 0.5, shape).astype(np.float32)
  losses = []
  for devs in (devices[:1], devices):
    mesh = parallel.make_mesh(devs)
    state = state_lib.create_train_state(config, mesh)
    fn = step_lib.compile_train_step(config, mesh, total_steps=1000)
    x = jax.device_put(batch, parallel.batch_sharding(mesh))
    _, metrics = fn(state, x)
    losses.append(float(metrics["loss"]))
  rel = abs(losses[0] - losses[1]) / max(abs(losses[0]), 1e-12)
  return rel < 1e-3, f"loss {losses[0]:.6g} vs {losses[1]:.6g} (rel {rel:.1e})"


def speed_tables(config, small: bool, rows: dict) -> None:
  """OT by size, compiled memory with and without remat, eval throughput."""
  step_s = rows["bfloat16"]["step_s"]
  print(f"\n# OT pairing alone; share of the bf16 step ({step_s:.4g} s)")
  if small:
    ot = {"B=64": bench_parts.time_ot(64, 64, repeats=2)}
  else:
    ot = bench_parts.time_ot_sizes(4096, step_s)
  benchmark.print_table(ot)
  print("\n# step memory per device (XLA, compiled against an abstract state)")
  # The config's own setting is the float32 row's compiled step; only the
  # other setting compiles here.
  own = bool(config.model.remat)
  c = config.copy_and_resolve_references()
  c.model.remat = not own
  other = flops.memory_estimate(c)
  keys = [k for k in other if k != "remat"]
  mem = {
    f"remat={own}": {
      **{k: rows["float32"][k] for k in keys},
      "remat": float(own),
    },
    f"remat={not own}": other,
  }
  mem = dict(sorted(mem.items()))  # remat=False first.
  benchmark.print_table(mem)
  print("\n# fused FID program (sample -> decode -> features), random weights")
  c = config.copy_and_resolve_references()
  c.eval.batch_size = config.train.batch_size
  if small:  # Inception's smallest input: a fast compile for the CI run.
    c.eval.inception_size = 75
  bench_parts.print_table(bench_parts.time_eval(c, repeats=2))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--small", action="store_true", help="tiny config")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  jax.config.update("jax_threefry_partitionable", True)
  dev = jax.devices()[0]
  print(
    f"# {dev.platform} {dev.device_kind} x{jax.device_count()}, "
    f"jax {jax.__version__}, {time.strftime('%Y-%m-%d %H:%M')}"
  )
  config = _config(args.small, args.batch)
  # The float32 row of the speed table, timed first: its steps cross a
  # curriculum stage, which is also the one-compile check.
  rows = {"float32": _time_step(config, "float32", args.steps)}
  checks = {
    "compiles": check_one_compile(rows["float32"]),
    "exact OT": check_exact_ot(64 if args.small else 128, 4096),
    "1 vs n": check_one_vs_all_devices(config),
  }
  print("\n| check | ok | detail |\n|---|---|---|")
  for name, (ok, detail) in checks.items():
    print(f"| {name} | {'yes' if ok else 'NO'} | {detail} |")
  rows["bfloat16"] = _time_step(config, "bfloat16", args.steps)
  print(f"\n# train step, global batch {config.train.batch_size}")
  benchmark.print_table(rows)
  speed_tables(config, args.small, rows)
  return 0 if all(ok for ok, _ in checks.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
