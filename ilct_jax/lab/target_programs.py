"""The run's programs, compiled ahead of time for a target's devices.

Each `compile_*` lowers and compiles one program the run would compile
(the train step, the 1-/2-step samplers with VAE decode, the latent encoder
step, the FID feature step) for a mesh of compile-only devices
(`ilct_jax.lab.targets`), from abstract shapes only: nothing is allocated.
`measure` compiles the named programs and returns their compiled cost
(`ilct_jax.lab.compiled_cost`) and compile seconds; where XLA:TPU itself
refuses a program for lack of HBM, that refusal becomes the figures.
`ilct_jax.lab.preflight` judges and reports them.
"""

import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ilct_jax import parallel, sampling
from ilct_jax import setup as setup_lib
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.evaluation import fid_samples
from ilct_jax.lab import compiled_cost, targets
from ilct_jax.models import autoencoder, inception
from ilct_jax.models import vae as vae_lib

PROGRAMS = ("train", "sample_1step", "sample_2step", "encode", "fid_features")


def _abstract(tree: Any, sharding: Any) -> Any:
  return jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree
  )


def _timed_compile(lowered: Any) -> tuple[Any, float]:
  t0 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, time.perf_counter() - t0


# Training-set sizes of the paper runs (ALGORITHM.md §13, flops.PAPER_RUNS):
# CelebA-HQ's 27k train split, LSUN Church doubled by flips, FFHQ 70k.
_PAPER_EXAMPLES = {
  "celeb_a_hq": 27_000,
  "lsun_church": 2 * 126_227,
  "ffhq": 70_000,
}


def examples(config: ml_collections.ConfigDict) -> int:
  """Training-set size: data.num_examples, else the paper run's size."""
  if config.data.num_examples > 0:
    return int(config.data.num_examples)
  where = f"{config.data.name} {config.data.latent_dir}"
  for key, n in _PAPER_EXAMPLES.items():
    if key in where:
      return n
  return 1797 if config.data.source == "digits" else 27_000  # UCI digits.


def compile_train(config, mesh) -> tuple[Any, float]:
  """The train step as `train.compile_step` compiles it, nothing allocated."""
  setup = setup_lib.build(config, mesh, examples(config))
  steps = max(setup.total_steps, 1)
  compiled, seconds = step_lib.compile_ahead(
    config, setup.mesh, setup.abstract_state, steps
  )  # setup.mesh: with the "fsdp" axis of train.fsdp > 1.
  return compiled, seconds


def _latent(config: ml_collections.ConfigDict) -> bool:
  return config.data.source != "digits"


def _decoder(config):
  """(decode(aux, x0), abstract aux): the SD VAE for latents, else identity."""
  if not _latent(config):
    return (lambda aux, x: x), ()
  vae = vae_lib.AutoencoderKL()
  decode = lambda aux, x: autoencoder.decode_pure(vae, aux, x)
  return decode, vae_lib.abstract_params(vae)


def compile_sampler(config, mesh, name: str) -> tuple[Any, float]:
  """`fid_samples.sample_program` (no Inception) for the 'onestep'/'twostep'."""
  sigmas = sampling.samplers(config)[name]
  decode, aux = _decoder(config)
  program = fid_samples.sample_program(config, sigmas, mesh, decode)
  repl = parallel.replicated(mesh)
  params = _abstract(state_lib.abstract_state(config).params, repl)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=repl)
  return _timed_compile(program.lower(params, _abstract(aux, repl), key))


def _image_side(config: ml_collections.ConfigDict) -> int:
  side = config.data.image_size
  return (
    side * vae_lib.AutoencoderKL().downsample_factor
    if _latent(config)
    else side
  )


def compile_encode(config, mesh) -> tuple[Any, float] | None:
  """The encode job's step: VAE encode + posterior sample (latent configs)."""
  if not _latent(config):
    return None
  vae = vae_lib.AutoencoderKL()
  hosts = len({d.process_index for d in mesh.devices.flat})
  devices = mesh.size
  batch = -(-max(int(config.data.encode_batch), 1) * hosts // devices) * devices
  rows, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  side = _image_side(config)

  def encode(params, images, keys):
    mean, logvar = autoencoder.encode_pure(vae, params, images)
    return jax.vmap(autoencoder.sample_latents)(keys, mean, logvar)

  fn = jax.jit(encode, out_shardings=rows)
  images = jax.ShapeDtypeStruct(
    (batch, side, side, 3), jnp.float32, sharding=rows
  )
  keys = jax.ShapeDtypeStruct((batch,), jax.random.key(0).dtype, sharding=rows)
  params = _abstract(vae_lib.abstract_params(vae), repl)
  return _timed_compile(fn.lower(params, images, keys))


def compile_features(config, mesh) -> tuple[Any, float]:
  """InceptionV3 pool3 of eval.batch_size uint8 images (the FID features)."""
  from ilct_jax.evaluation import features  # Module-level import is heavy.

  module = inception.InceptionV3()
  size = config.eval.inception_size
  probe = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), probe)
  rows, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  side = _image_side(config)
  shape = (config.eval.batch_size, side, side, 3)
  images = jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=rows)
  fn = jax.jit(
    lambda v, u8: features.pool3(module, v, u8, size), out_shardings=rows
  )
  return _timed_compile(fn.lower(_abstract(variables, repl), images))


def _check_batches(config, devices: int, programs) -> None:
  checks = {"train": ("train.batch_size", config.train.batch_size)}
  for p in ("sample_1step", "sample_2step", "fid_features"):
    checks[p] = ("eval.batch_size", config.eval.batch_size)
  for p in programs:
    if p in checks and checks[p][1] % devices:
      field, value = checks[p]
      raise ValueError(
        f"{field}={value} does not divide over the {devices} chips of this "
        f"topology; set --config.{field} to a multiple of {devices}"
      )


def measure(
  config: ml_collections.ConfigDict,
  topology: str,
  num_slices: int = 1,
  programs=PROGRAMS,
) -> dict[str, dict[str, float]]:
  """{program: compiled_cost.of(...) + compile_s} on the named topology."""
  devices = targets.devices(topology, num_slices)
  mesh = parallel.make_mesh(devices)
  _check_batches(config, mesh.size, programs)
  makers = {
    "train": lambda: compile_train(config, mesh),
    "sample_1step": lambda: compile_sampler(config, mesh, "onestep"),
    "sample_2step": lambda: compile_sampler(config, mesh, "twostep"),
    "encode": lambda: compile_encode(config, mesh),
    "fid_features": lambda: compile_features(config, mesh),
  }
  out = {}
  for name in programs:
    t0 = time.perf_counter()
    try:
      made = makers[name]()
    except jax.errors.JaxRuntimeError as e:
      oom = _compiler_oom(str(e))
      if oom is None:
        raise
      out[name] = {**oom, "compile_s": time.perf_counter() - t0}
      continue
    if made is None:
      continue
    compiled, seconds = made
    out[name] = {**compiled_cost.of(compiled), "compile_s": seconds}
  return out


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# XLA:TPU's refusals: "RESOURCE_EXHAUSTED: Ran out of memory on HBM ... (X)
# exceeds available HBM (Y)" far past the chip, and near it (after buffer
# assignment) "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: ... Ran out of
# memory in memory space hbm. Used X of Y hbm."
_OOM = re.compile(
  r"RESOURCE_EXHAUSTED:.*Ran out of memory (in memory space hbm|on HBM)",
  re.DOTALL,
)
_NEED = (
  re.compile(
    r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"
  ),
  re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"),
)


def _compiler_oom(message: str) -> dict[str, float] | None:
  """The TPU compiler's own refusal ("Ran out of memory on HBM"), as figures.

  Far past the chip's memory, XLA:TPU stops before any buffer assignment;
  near it, after. Either message names the bytes required and the usable
  HBM (e.g. 1.51T of 15.75G, or 15.88G of 15.75G), which the verdict then
  reports.
  """
  if not _OOM.search(message):
    return None
  m = _NEED[0].search(message) or _NEED[1].search(message)
  nan = float("nan")
  need = float(m.group(1)) * _UNITS[m.group(2)] if m else float("inf")
  usable = float(m.group(3)) * _UNITS[m.group(4)] if m else nan
  keys = ("args", "outputs", "aliased", "temp", "flops", "bytes_accessed")
  return {
    **{k: nan for k in keys},
    "total": need,
    "usable": usable,
    "compiler_oom": 1.0,
    "collective_count": nan,
    "collective_bytes": nan,
  }
