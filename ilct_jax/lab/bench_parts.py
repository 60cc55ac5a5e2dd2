"""Timing loops of the step's parts, and the tables the benchmark prints.

`python -m ilct_jax.benchmark` (benchmark.py) runs them by `--mode`:
  model  the UNet alone: forward, and forward + backward of a mean-square
         loss (as a PyTorch `backward()` timing);
  ot     the OT pairing alone (exact, Crouse up to 512, sinkhorn) by size;
  eval   the fused FID program per sampler, and a 50k FID's projected hours;
  vae    SD-VAE encode/decode throughput; fid: InceptionV3 features.
Plus the shared helpers: waited-for call timings, peak RSS, markdown tables.
Imports no TensorFlow.
"""

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ilct_jax import coupling, parallel, sampling
from ilct_jax import state as state_lib
from ilct_jax.evaluation import features, fid_samples
from ilct_jax.lab import flops
from ilct_jax.models import autoencoder, inception, unet
from ilct_jax.models import vae as vae_lib

PyTree = Any


def time_calls(fn: Callable[..., Any], args: tuple, repeats: int):
  """(first call seconds, median seconds of `repeats` more calls).

  Each call is waited for (`block_until_ready`); the first one includes the
  compile unless this process already compiled the same program.
  """
  times = _call_times(fn, args, repeats + 1)
  return times[0], statistics.median(times[1:])


def _call_times(fn: Callable[..., Any], args: tuple, calls: int) -> list:
  """Seconds of each of `calls` waited-for calls of fn(*args)."""
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _random_params(model: Any, x: jax.Array, labels: jax.Array) -> PyTree:
  """0.02 * N(0, 1) for every parameter (no zero-init branch stays zero)."""
  kp = jax.random.key(1)
  abstract = jax.eval_shape(
    lambda k: model.init(k, x, labels, train=False)["params"], kp
  )
  leaves, treedef = jax.tree.flatten(abstract)
  keys = jax.random.split(kp, len(leaves))

  def make(ks):
    values = [
      0.02 * jax.random.normal(k, a.shape, a.dtype) for k, a in zip(ks, leaves)
    ]
    return jax.tree.unflatten(treedef, values)

  return jax.jit(make)(keys)


def time_model(
  config: ml_collections.ConfigDict, batch: int, steps: int, warmup: int
) -> dict[str, float]:
  """Times the config's UNet alone on the default device.

  Two jitted programs on random float32 inputs [batch, *example_shape] and
  c_noise values: the forward (train=False) and the gradient of
  mean(F(x)^2) (train=True), i.e. one forward + one backward as in a plain
  PyTorch `loss.backward()` timing. Returns median and min seconds, compile
  seconds, the analytic and XLA GFLOP of each, params and peak RSS (MiB).
  """
  model = state_lib.create_model(config)
  shape = (batch, *state_lib.example_shape(config))
  x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  labels = 250.0 * jnp.log(jnp.linspace(0.01, 10.0, batch, dtype=jnp.float32))
  params = _random_params(model, x, labels)

  def loss(p, x, labels):
    y = model.apply({"params": p}, x, labels, train=True)
    return jnp.mean(jnp.square(y))

  programs = {
    "fwd": lambda p, x, n: model.apply({"params": p}, x, n, train=False),
    "fwd_bwd": jax.grad(loss),
  }
  figures = {"batch": float(batch), "params": float(unet.count_params(params))}
  for name, fn in programs.items():
    start = time.perf_counter()
    jitted = jax.jit(fn, compiler_options=model.kernels.compiler_options())
    compiled = jitted.lower(params, x, labels).compile()
    figures[f"{name}_compile_s"] = time.perf_counter() - start
    figures[f"{name}_gflop"] = flops.matmul_flops(fn, params, x, labels) / 1e9
    figures[f"{name}_xla_gflop"] = (
      flops.xla_cost(compiled).get("flops", 0.0) / 1e9
    )
    warm = max(warmup, 1)
    times = _call_times(compiled, (params, x, labels), warm + steps)[warm:]
    figures[f"{name}_s"] = statistics.median(times)
    figures[f"{name}_min_s"] = min(times)
  figures["bwd_s"] = figures["fwd_bwd_s"] - figures["fwd_s"]
  figures["peak_rss_mib"] = _peak_rss_mib()
  return figures


_OT_SOLVERS = {
  "exact": lambda x, z: coupling.assignment(x, z, method="exact"),
  "exact_crouse": coupling.crouse_assignment,
  "sinkhorn": lambda x, z: coupling.assignment(x, z, method="sinkhorn"),
}
CROUSE_MAX = 512  # The dense JAX solver's cost grows fast: 1.3 s at 512.


def time_ot(batch: int = 128, dim: int = 4096, repeats: int = 10) -> dict:
  """`<solver>_s`: median seconds of one jitted call on B x D Gaussians.

  D = 4096 is a 32x32x4 CelebA-HQ latent; `repeats` timed calls follow one
  compile call; exact_crouse only up to CROUSE_MAX.
  """
  key_x, key_z = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (batch, dim), jnp.float32)
  z = jax.random.normal(key_z, (batch, dim), jnp.float32)
  figures = {"batch": batch, "dim": dim}
  for name, fn in _OT_SOLVERS.items():
    if name == "exact_crouse" and batch > CROUSE_MAX:
      continue
    figures[f"{name}_s"] = time_calls(jax.jit(fn), (x, z), repeats)[1]
  return figures


OT_SIZES = (128, 512, 1536, 4096)  # 1536: the LSUN global batch.


def time_ot_sizes(dim: int, step_s: float | None) -> dict[str, dict]:
  """time_ot at each of OT_SIZES (fewer repeats as it grows).

  With `step_s` (an accelerator step time, seconds), each row adds the
  exact pairing's share of such a step.
  """
  rows = {}
  for size in OT_SIZES:
    row = time_ot(size, dim, repeats=10 if size <= 512 else 3)
    if step_s:
      row["exact_share_of_step"] = row["exact_s"] / step_s
    rows[f"B={size}"] = row
  return rows


def time_eval(config: ml_collections.ConfigDict, repeats: int) -> dict:
  """Throughput of the fused FID program (fid_samples.sample_program).

  One jitted, sharded program per batch: sampler -> SD-VAE decode (latent
  configs; random weights) -> uint8 -> InceptionV3 pool3 (random weights),
  nothing on the host until the features. For each sampler of
  eval.samplers: compile seconds, images/s and the projected wall time of
  a 50k-sample FID. (eval.protocol=paper adds host JPEG work per image.)
  """
  mesh = parallel.make_mesh()
  if config.data.source == "digits":
    decode, aux = (lambda a, x: x), ()
  else:
    vae = vae_lib.AutoencoderKL()
    decode = lambda a, x: autoencoder.decode_pure(vae, a, x)
    aux = vae_lib.random_params(vae)
  module = inception.InceptionV3()
  variables = inception.init_variables(module)
  model = state_lib.create_model(config, mesh)
  shape = (config.eval.batch_size, *state_lib.example_shape(config))
  x = jnp.zeros(shape, jnp.float32)
  params = _random_params(model, x, jnp.zeros((shape[0],)))
  rows = {}
  for name in config.eval.samplers:
    sigmas = sampling.samplers(config)[name]
    program = fid_samples.sample_program(config, sigmas, mesh, decode, module)
    args = (params, aux, jax.random.key(0), variables)
    first, per_batch = time_calls(program, args, repeats)
    rate = config.eval.batch_size / per_batch
    rows[name] = {
      "batch": float(config.eval.batch_size),
      "nfe": float(sum(v > config.ct.sigma_min for v in sigmas)),
      "compile_s": first - per_batch,
      "images_per_s": rate,
      "fid50k_hours": 50_000 / rate / 3600.0,
    }
  return rows


def time_vae(
  image_size: int = 256, batch: int = 4, repeats: int = 3
) -> dict[str, Any]:
  """Encode/decode throughput of the SD VAE (random params), one device.

  Returns:
    images/s for encode and decode, the compile (first-call) seconds, the
    parameter count and the device.
  """
  vae = vae_lib.AutoencoderKL()
  key_img, key_z = jax.random.split(jax.random.key(0))
  params = vae_lib.random_params(vae)
  codec = autoencoder.make_codec(
    vae, params, parallel.make_mesh(jax.devices()[:1])
  )
  shape = (batch, image_size, image_size, vae.in_channels)
  images = jax.random.uniform(key_img, shape, minval=-1.0, maxval=1.0)
  enc_first, enc_s = time_calls(codec.encode, (images,), repeats)
  latents = codec.sample_latents(key_z, *codec.encode(images))
  dec_first, dec_s = time_calls(codec.decode, (latents,), repeats)
  return {
    "device": str(jax.devices()[0]),
    "image_size": image_size,
    "batch": batch,
    "encode_images_per_s": batch / enc_s,
    "decode_images_per_s": batch / dec_s,
    "encode_first_call_s": enc_first,
    "decode_first_call_s": dec_first,
    "param_count": vae_lib.param_count(vae),
  }


def time_fid_features(batch: int = 16, repeats: int = 3) -> dict[str, Any]:
  """Feature-extraction speed on 256x256 uint8 inputs (random weights).

  Returns:
    images_per_s, seconds_per_batch, compile_s, device and projected_50k_s
    (the wall time of the features of a 50k-sample FID).
  """
  module = inception.InceptionV3()
  f = features.feature_fn(module, inception.init_variables(module))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
  compile_s, per_batch = time_calls(f, (images,), repeats)
  rate = batch / per_batch
  return {
    "device": jax.devices()[0].device_kind,
    "batch": batch,
    "compile_s": compile_s,
    "seconds_per_batch": per_batch,
    "images_per_s": rate,
    "projected_50k_s": 50_000 / rate,
  }


def print_table(rows: dict[str, dict], keys: list[str] | None = None) -> None:
  """A markdown table: one column per row of `rows` (figures down)."""
  keys = keys or list(dict.fromkeys(k for r in rows.values() for k in r))
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  print(
    "| figure | " + " | ".join(rows) + " |\n" + "|---" * (len(rows) + 1) + "|"
  )
  for k in keys:
    print(
      f"| {k} | " + " | ".join(fmt(r.get(k, "-")) for r in rows.values()) + " |"
    )
