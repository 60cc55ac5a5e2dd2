"""The kernel switch follows the target; the TPU preflight's figures, verdict.

TPU programs are compiled on this CPU host for libtpu's compile-only devices
(the `preflight` extra); the tests that need libtpu skip, saying so, where it
is not installed. Paper-size compiles take minutes and are a documented
command (docs/SCALING.md), not part of the suite.
"""

import functools
import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilct_jax import kernels, parallel
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.lab import compiled_cost, preflight, target_programs, targets
from ilct_jax.models import attention, norms

HAVE_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(
  not HAVE_LIBTPU,
  reason="libtpu is not installed (pip install -e '.[preflight]')",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_ROW = kernels.Kernels("tpu", conv="xla", norm="custom", attention="xla")


@pytest.fixture
def optimized():
  """TPU figures as the preflight sees them: XLA's optimizations on."""
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", True)


# ------------------------------------------------------------ kernel switch


def test_platform_comes_from_the_devices_not_the_host():
  assert kernels.platform_of(parallel.make_mesh()) == "cpu"
  assert kernels.platform_of(jax.devices()[:2]) == "cpu"
  assert kernels.platform_of("cuda") == "gpu"
  assert kernels.platform_of("TPU") == "tpu"
  with pytest.raises(ValueError, match="unknown platform 'metal'"):
    kernels.platform_of("metal")
  with pytest.raises(ValueError, match="empty device list"):
    kernels.platform_of([])


def test_select_resolves_auto_per_platform_and_keeps_overrides(tiny_config):
  m = tiny_config.model
  assert kernels.select(m, "cpu") == kernels.Kernels(
    "cpu", "cpu", "custom", "custom"
  )
  assert kernels.select(m, "tpu") == TPU_ROW
  assert (
    kernels.select(m, "cpu").compiler_options() == kernels.CPU_COMPILER_OPTIONS
  )
  assert kernels.select(m, "tpu").compiler_options() is None
  m.kernels.conv, m.kernels.norm = "cpu", "xla"
  assert kernels.select(m, "tpu") == kernels.Kernels("tpu", "cpu", "xla", "xla")
  m.kernels.attention = "flash"
  with pytest.raises(ValueError, match="model.kernels.attention='flash'"):
    kernels.select(m, "tpu")


def test_one_switch_picks_plain_or_hand_written_forms(tiny_config):
  """model.kernels.forms: plain (XLA formulas) or cpu_tuned (hand-written)
  on any platform; a kernel's own field still overrides it."""
  m = tiny_config.model
  m.kernels.forms = "plain"
  for platform in kernels.PLATFORMS:
    assert kernels.select(m, platform) == kernels.Kernels(
      platform, "xla", "xla", "xla"
    )
  m.kernels.forms = "cpu_tuned"
  assert kernels.select(m, "tpu") == kernels.Kernels(
    "tpu", "cpu", "custom", "custom"
  )
  m.kernels.norm = "xla"
  assert kernels.select(m, "tpu").norm == "xla"
  m.kernels.forms = "fast"
  with pytest.raises(ValueError, match="model.kernels.forms='fast'"):
    kernels.select(m, "cpu")


@pytest.mark.parametrize("name", norms.NORMS)
def test_norm_forms_agree(name):
  """The plain formula and the hand-written backward: same values, grads."""
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 8)) * 3.0 + 1.0
  dy = jax.random.normal(jax.random.key(2), x.shape)
  out = {}
  for form in ("custom", "xla"):
    module = norms.make_norm(name, form=form, num_groups=2)
    params = module.init(jax.random.key(0), x)
    params = jax.tree.map(
      lambda p: p + 0.3 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), params
    )
    y, vjp = jax.vjp(module.apply, params, x)
    out[form] = (y, *vjp(dy))
  for a, b in zip(jax.tree.leaves(out["custom"]), jax.tree.leaves(out["xla"])):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_attention_forms_agree():
  qkv = jax.random.normal(jax.random.key(3), (2, 4, 4, 3 * 16))
  d_out = jax.random.normal(jax.random.key(4), (2, 4, 4, 16))
  res = {}
  for form in ("custom", "xla"):
    fn = functools.partial(attention.multihead, heads=2, form=form)
    y, vjp = jax.vjp(fn, qkv)
    res[form] = (y, vjp(d_out)[0])
  for a, b in zip(res["custom"], res["xla"]):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_unet_forms_agree(tiny_config):
  """Every kernel form: the same network, values and parameter gradients."""
  base = state_lib.create_model(tiny_config, "cpu")
  x = jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
  labels = jnp.array([-100.0, 300.0])
  params = base.init(jax.random.key(0), x, labels, train=False)["params"]
  params = jax.tree.map(lambda p: p + 0.05, params)  # Zero-init layers live.

  def grads(model):
    loss = lambda p: jnp.sum(
      jnp.sin(model.apply({"params": p}, x, labels, train=False))
    )
    return jax.value_and_grad(loss)(params)

  want = grads(base)
  for forms in (("xla", "custom", "custom"), ("cpu", "xla", "xla")):
    model = base.clone(kernels=kernels.Kernels("tpu", *forms))
    got = grads(model)
    # Summation orders differ: float32 rounding (seen: 1.6e-5 on O(1)).
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ cost reading


def test_collectives_are_counted_with_their_bytes():
  hlo = (
    (
      "  %a = f32[16,8]{1,0:T(8,128)} parameter(0)\n"
      "  %all-reduce.63 = (f32[]{:T(128)}, f32[64,32]{0,1:T(8,128)S(3)}, "
      "/*index=2*/bf16[8]{0}) all-reduce(%x, %y, %z), channel_id=61\n"
      "  %all-gather = f32[16,8,8,1]{2,1,3,0:T(8,128)S(3)} all-gather(%b), "
      "dimensions={0}\n"
    )
    + """
  %ags = (f32[4,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%c), dimensions={0}
  %agd = f32[16,8]{1,0} all-gather-done(%ags)
  %fusion = f32[4]{0} fusion(%all-reduce.63), kind=kLoop
  """
  )
  c = compiled_cost.collectives(hlo)
  assert c["all-reduce"] == {"count": 1, "bytes": 4 + 64 * 32 * 4 + 8 * 2}
  assert c["all-gather"]["count"] == 2
  assert c["all-gather"]["bytes"] == 16 * 8 * 8 * 4 + (4 * 8 + 16 * 8) * 4 // 2
  assert c["reduce-scatter"]["count"] == 0


def test_padded_bytes_round_minor_dims_up_to_the_tile():
  layout = lambda order, tiling: type(
    "L", (), {"major_to_minor": order, "tiling": tiling}
  )()
  f32 = np.float32
  assert compiled_cost.padded_bytes((), f32, layout((), ((128,),))) == 512
  assert (
    compiled_cost.padded_bytes((3, 5), f32, layout((0, 1), ((8, 128),)))
    == 8 * 128 * 4
  )
  # Layout order decides which dimensions are minor: [5, 3] as (1, 0).
  assert (
    compiled_cost.padded_bytes((3, 5), f32, layout((1, 0), ((8, 128),)))
    == 8 * 128 * 4
  )
  assert (
    compiled_cost.padded_bytes((16, 256), f32, layout((0, 1), ((8, 128),)))
    == 16 * 256 * 4
  )
  assert compiled_cost.padded_bytes((3, 5), f32, None) == 60


def test_batch_search_finds_the_largest_fitting_multiple(
  monkeypatch, tiny_config
):
  """Affine memory: two compiles, the line's guess, one confirmation."""
  cap = targets.CHIPS["v5e"].hbm_gib * preflight.GIB
  state, per_example = 3.0 * preflight.GIB, 0.011 * preflight.GIB
  calls = []

  def fake_measure(config, topology, num_slices, programs):
    calls.append(config.train.batch_size)
    return {
      "train": {
        "total": state + per_example * config.train.batch_size,
        "compile_s": 0.0,
      }
    }

  monkeypatch.setattr(preflight, "measure", fake_measure)
  best, seen = preflight.batch_search(tiny_config, "v5e-8", log=lambda s: None)
  want = int((cap - state) / per_example) // 8 * 8
  assert best == want and best % 8 == 0
  assert seen[best] <= cap < state + per_example * (best + 8)
  assert calls == [16, 8, want]  # The batch, half of it, the line's guess.
  # Where the line misleads (memory jumps past 1024), bisection finds it.
  calls.clear()
  jump = lambda b: (
    state + per_example * b + (4 * preflight.GIB if b > 1024 else 0)
  )
  monkeypatch.setattr(
    preflight,
    "measure",
    lambda c, *a: {
      "train": {"total": jump(c.train.batch_size), "compile_s": 0}
    },
  )
  best, seen = preflight.batch_search(tiny_config, "v5e-8", log=lambda s: None)
  assert best == 1024 and jump(1032) > cap, (best, sorted(seen))


def test_roofline_is_the_largest_of_three_bounds(tiny_config):
  chip = targets.CHIPS["v4"]
  f = {"flops": 2.75e12, "bytes_accessed": 6.0e9, "collective_bytes": 1.2e9}
  r = preflight.roofline(tiny_config, f, "v4-8", mfu=0.5)
  assert r["compute_s"] == pytest.approx(2.75e12 / (chip.peak_tflops * 1e12))
  assert r["memory_s"] == pytest.approx(6.0e9 / (chip.hbm_gbps * 1e9))
  assert r["collective_s"] == pytest.approx(1.2e9 / (chip.ici_gbps * 1e9))
  assert r["bound_s"] == pytest.approx(0.01)  # compute: 10 ms.
  assert r["steps"] == tiny_config.train.num_steps
  step_s = (
    r["model_tflop_per_step"] * 1e12 / (4 * chip.peak_tflops * 1e12 * 0.5)
  )
  # The tiny step at 50% MFU is faster than its 10 ms bound: the bound wins.
  assert step_s < r["bound_s"] and r["projected_step_s"] == r["bound_s"]
  tiny = {"flops": 1.0, "bytes_accessed": 1.0, "collective_bytes": 1.0}
  r = preflight.roofline(tiny_config, tiny, "v4-8", mfu=0.5)
  assert r["projected_step_s"] == pytest.approx(step_s)  # MFU wins.


# ------------------------------------------------------------ TPU programs


def _lowered_step(config, mesh) -> str:
  state = state_lib.abstract_sharded_state(config, mesh)
  batch = jax.ShapeDtypeStruct(
    (config.train.batch_size, *state_lib.example_shape(config)),
    jnp.float32,
    sharding=parallel.batch_sharding(mesh),
  )
  fn = step_lib.compile_train_step(config, mesh, 100)
  return fn.lower(state, batch).as_text()


@needs_libtpu
def test_tpu_program_takes_the_tpu_kernels(tiny_config):
  """On a CPU host, a v4-8 program is the TPU one, not XLA:CPU's forms."""
  assert jax.default_backend() == "cpu"
  mesh = parallel.make_mesh(targets.devices("v4-8"))
  assert state_lib.create_model(tiny_config, mesh).kernels == TPU_ROW
  auto = _lowered_step(tiny_config, mesh)
  named = tiny_config.copy_and_resolve_references()
  named.model.kernels.update(conv="xla", norm="custom", attention="xla")
  assert _lowered_step(named, mesh) == auto
  cpu_forms = tiny_config.copy_and_resolve_references()
  cpu_forms.model.kernels.conv = "cpu"
  cpu_text = _lowered_step(cpu_forms, mesh)
  assert cpu_text != auto
  # The CPU forms make 1x1 convolutions GEMMs: fewer convolutions.
  count = lambda t: t.count("stablehlo.convolution")
  assert count(auto) > count(cpu_text) > 0
  assert "xla_cpu" not in auto


@needs_libtpu
@pytest.mark.parametrize("topology", ["v4-8", "v5e-8"])
def test_tiny_compiles_and_fits(topology, tiny_config, optimized):
  config = tiny_config
  config.eval.batch_size = 8
  mesh = parallel.make_mesh(targets.devices(topology))
  chips = targets.topology(topology).chips
  assert mesh.size == chips
  compiled, _ = target_programs.compile_train(config, mesh)
  f = compiled_cost.of(compiled)
  state = state_lib.abstract_sharded_state(config, mesh)
  batch = jax.ShapeDtypeStruct(
    (16, 8, 8, 1), jnp.float32, sharding=parallel.batch_sharding(mesh)
  )
  # Arguments are exactly the replicated state and this chip's batch rows,
  # at the TPU's tile-padded sizes.
  assert f["args"] == compiled_cost.argument_bytes(compiled, (state, batch))
  logical = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state))
  assert logical < f["args"] < 8 * logical
  # The state is donated: its buffers are reused for the new state.
  assert f["aliased"] >= f["args"] - 4 * 2**20
  assert 0 < f["temp"] < 64 * 2**20
  assert f["total"] == f["args"] + f["temp"] + max(
    f["outputs"] - f["aliased"], 0
  )
  # The gradients are all-reduced: at least the parameters' bytes.
  params = state_lib.abstract_state(config).params
  grad_bytes = sum(a.size * 4 for a in jax.tree.leaves(params))
  assert f["all-reduce_bytes"] >= grad_bytes
  assert f["flops"] > 0 and f["bytes_accessed"] > 0
  figures = preflight.measure(
    config, topology, programs=("sample_1step", "sample_2step")
  )
  figures["train"] = {**f, "compile_s": 0.0}
  # Two network evaluations cost about twice one.
  ratio = figures["sample_2step"]["flops"] / figures["sample_1step"]["flops"]
  assert 1.8 < ratio < 2.2
  assert preflight.verdict(figures, topology) is None


@needs_libtpu
def test_an_impossible_batch_is_refused_in_one_line():
  cmd = [
    sys.executable,
    "-m",
    "ilct_jax.lab.preflight",
    "--config=configs/tiny.py",
    "--topology=v5e-8",
    "--programs=train",
    # 128x128 inputs (the bottleneck attends over 16,384 positions) at a
    # global batch of 1024: far past a v5e's HBM, so XLA:TPU itself refuses
    # in seconds (a batch that only just overflows compiles for minutes).
    "--config.data.image_size=128",
    "--config.train.batch_size=1024",
    "--config.coupling.method=none",
    "--compile_cache=",
  ]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run(
    cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert out.returncode == preflight.EXIT_DOES_NOT_FIT, out.stderr[-2000:]
  lines = [x for x in out.stderr.splitlines() if x.startswith("preflight:")]
  assert len(lines) == 1, out.stderr[-2000:]
  assert lines[0].startswith(
    "preflight: train does not fit on v5e-8: it needs "
  )
  assert (
    "a TPU v5e has 16 GiB HBM (15.75 GiB usable, says its compiler)" in lines[0]
  )
  assert "| train |" in out.stdout and "| NO |" in out.stdout


@needs_libtpu
def test_unknown_topology_and_undivisible_batch_are_clear(tiny_config):
  with pytest.raises(ValueError, match="--topology='v9-8' is unknown"):
    targets.topology("v9-8")
  tiny_config.train.batch_size = 12
  with pytest.raises(
    ValueError, match="train.batch_size=12 does not divide over the 8 chips"
  ):
    preflight.measure(tiny_config, "v5e-8", programs=("train",))


HAVE_CUDA_PLUGIN = importlib.util.find_spec("jax_cuda12_plugin") is not None


@pytest.mark.skipif(
  not HAVE_CUDA_PLUGIN,
  reason="no CUDA plugin (pip install -e '.[preflight-gpu]')",
)
def test_tiny_compiles_for_eight_h100s_without_a_gpu(tiny_config, optimized):
  """Deviceless GPU compilation from a target description (jax 0.10)."""
  mesh = parallel.make_mesh(targets.devices("h100-8"))
  assert mesh.size == 8 and kernels.platform_of(mesh) == "gpu"
  assert state_lib.create_model(tiny_config, mesh).kernels.conv == "xla"
  compiled, _ = target_programs.compile_train(tiny_config, mesh)
  f = compiled_cost.of(compiled)
  state = state_lib.abstract_sharded_state(tiny_config, mesh)
  batch = jax.ShapeDtypeStruct(
    (16, 8, 8, 1), jnp.float32, sharding=parallel.batch_sharding(mesh)
  )
  # No tiles on GPU: the arguments are the plain bytes of state and rows.
  logical = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(state))
  assert f["args"] == compiled_cost.argument_bytes(compiled, (state, batch))
  assert f["args"] == logical + 2 * 8 * 8 * 4
  assert 0 < f["temp"] < 64 * 2**20 and f["all-reduce_count"] >= 1
  assert preflight.verdict({"train": f}, "h100-8") is None


def test_batch_search_stops_at_the_resolution(monkeypatch, tiny_config):
  """With resolution 1/16 the answer is within 1/16 of the true largest
  batch and takes fewer compiles than the exact search (memory that jumps
  past 1024 makes the line's guesses creep up on the answer)."""
  gib = preflight.GIB
  cap = targets.CHIPS["v5e"].hbm_gib * gib
  total = lambda b: 3 * gib + 0.011 * gib * b + (4 * gib if b > 1024 else 0)
  counts = {}
  for res in (0.0, 1 / 16):
    calls = []

    def fake(c, *a, calls=calls):
      calls.append(c.train.batch_size)
      return {"train": {"total": total(c.train.batch_size), "compile_s": 0}}

    monkeypatch.setattr(preflight, "measure", fake)
    best, _ = preflight.batch_search(
      tiny_config, "v5e-8", log=lambda s: None, resolution=res
    )
    assert total(best) <= cap and best >= 1024 * (1 - res), (res, best)
    counts[res] = len(calls)
  assert counts[1 / 16] < counts[0.0], counts


def test_scaling_row_resumes_from_its_compiles(monkeypatch, tmp_path):
  """A row stopped after two compiles resumes without redoing them."""
  from ilct_jax.lab import scaling_table

  gib = preflight.GIB
  calls, stop_after = [], [2]

  def fake(config, topology, num_slices, programs):
    if len(calls) == stop_after[0]:
      raise KeyboardInterrupt
    b = config.train.batch_size
    calls.append(b)
    return {
      "train": {
        "total": 4 * gib + 0.004 * gib * b,
        "args": 4.0 * gib,
        "temp": 0.004 * gib * b,
        "flops": 1e12,
        "bytes_accessed": 1e10,
        "collective_bytes": 1e8,
        "compile_s": 1.0,
      }
    }

  monkeypatch.setattr(target_programs, "measure", fake)
  monkeypatch.setattr(preflight, "measure", fake)
  sidecar = str(tmp_path / "rows.compiles.jsonl")
  with pytest.raises(KeyboardInterrupt):
    scaling_table.row("celeba", "v5e-8", "float32", lambda s: None, sidecar)
  assert calls == [128, 256]  # Whole OT groups of 128 (granule).
  stop_after[0] = 99
  r = scaling_table.row("celeba", "v5e-8", "float32", lambda s: None, sidecar)
  assert calls[2:] and 128 not in calls[2:] and 256 not in calls[2:]
  total = lambda b: 4 * gib + 0.004 * gib * b
  exact = max(b for b in range(128, 4000, 128) if total(b) <= 16 * gib)
  assert exact * (1 - scaling_table.RESOLUTION) <= r["max_batch"] <= exact
  assert set(scaling_table.compiles(sidecar, ("celeba", "v5e-8", "float32")))
  assert r["tflop_per_chip"] == 1.0 and r["fits"]


def test_granule_keeps_whole_ot_groups(tiny_config):
  """Batches divide over the chips and into whole OT groups."""
  from configs import celeba, ilct_baseline, lsun_church

  assert preflight.granule(celeba.get_config(), 4) == 128
  assert preflight.granule(lsun_church.get_config(), 8) == 192
  assert preflight.granule(ilct_baseline.get_config(), 8) == 8  # No OT.
  tiny_config.coupling.group_size = 0
  assert preflight.granule(tiny_config, 8) == 8
  tiny_config.coupling.group_size = 6
  assert preflight.granule(tiny_config, 4) == 12


def test_kernel_variants_switch_each_kernel_alone():
  assert preflight.kernel_variants("tpu") == [
    ("auto", {}),
    ("conv=cpu", {"conv": "cpu"}),
    ("norm=xla", {"norm": "xla"}),
    ("attention=custom", {"attention": "custom"}),
  ]
  assert [n for n, _ in preflight.kernel_variants("cpu")][1:] == [
    "conv=xla",
    "norm=xla",
    "attention=xla",
  ]


@pytest.mark.parametrize(
  "message, need, usable",
  [
    (  # Far past the chip: before buffer assignment.
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM while allocating: "
      "program (1.51T) exceeds available HBM (15.75G)",
      1.51 * 2**40,
      15.75 * 2**30,
    ),
    (  # Near it (XLA:TPU in jax 0.10.2, v5e-8, bf16 CelebA at 5376).
      "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: E1000: "
      "CompileTimeHbmOom: XLA:TPU compile permanent error. Ran out of memory "
      "in memory space hbm. Used 15.88G of 15.75G hbm. Exceeded hbm capacity "
      "by 137.71M.\nTotal hbm usage >= 16.13G:",
      15.88 * 2**30,
      15.75 * 2**30,
    ),
  ],
)
def test_compiler_refusals_become_figures(message, need, usable):
  f = target_programs._compiler_oom(message)  # noqa: SLF001
  assert f["total"] == pytest.approx(need) and f["usable"] == usable
  assert not preflight.fits(f, "v5e-8")
  line = preflight.verdict({"train": f}, "v5e-8")
  assert "(15.75 GiB usable, says its compiler)" in line
  assert target_programs._compiler_oom("RESOURCE_EXHAUSTED: host") is None  # noqa: SLF001


def test_scaling_row_never_takes_a_refused_batch_as_fitting(
  monkeypatch, tmp_path
):
  """XLA's refusal can name less than the datasheet HBM (15.88 of a 16 GiB
  v5e's 15.75 usable): a refused batch in the compiles file stays refused."""
  import json

  from ilct_jax.lab import scaling_table

  gib = preflight.GIB
  sidecar = tmp_path / "rows.compiles.jsonl"
  key = ["celeba", "v5e-8", "bfloat16"]
  refused = {"total": 15.88 * gib, "usable": 15.75 * gib, "compiler_oom": 1.0}
  paper = {
    "total": 5.3 * gib,
    "args": 4.1 * gib,
    "temp": 1.2 * gib,
    "flops": 1e12,
    "bytes_accessed": 4e10,
    "collective_bytes": 1e8,
    "compile_s": 1.0,
  }
  with open(sidecar, "w") as f:
    for b, figures in ((128, paper), (5376, refused)):
      f.write(json.dumps(dict(key=key, batch=b, figures=figures)) + "\n")
  calls = []

  def fake(config, *a):
    b = config.train.batch_size
    calls.append(b)
    return {"train": {**paper, "total": 5.3 * gib + 0.002 * gib * (b - 128)}}

  monkeypatch.setattr(preflight, "measure", fake)
  r = scaling_table.row(
    "celeba", "v5e-8", "bfloat16", lambda s: None, str(sidecar)
  )
  assert 0 < r["max_batch"] < 5376 and 5376 not in calls
