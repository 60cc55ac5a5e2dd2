"""Sample quality of a checkpoint: FID, precision and recall (--mode=eval).

The protocol (ALGORITHM.md §14, §15; docs/EVAL.md): `eval.num_samples`
samples per sampler from one EMA (seed `eval.seed`), decoded and quantized
as `eval.protocol` says (`paper`: truncation and JPEG-75, as the authors
measured; `png`: rounding, lossless), InceptionV3 pool3 features
(pytorch-fid's network and input path; evaluation/fid_samples.py), FID against
reference statistics and k = 3 precision/recall against reference
features. Output: WORKDIR/eval/metrics_<step>.json and TensorBoard
`eval/fid_<sampler>` (and precision/recall); during training
`train_time_fid` logs `train_eval/...`. The reference of the pixel demo:
python -m ilct_jax.evaluation.evaluate --config=... --stats_out=...
"""

from ilct_jax import hostmem, runs

if __name__ == "__main__":
  hostmem.use_huge_pages()  # First: re-executes once, before heavy imports.

import functools
import io
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags, logging

from ilct_jax import (
  choices,
  parallel,
  reporting,
  sampling,
  storage,
)
from ilct_jax import setup as setup_lib
from ilct_jax import state as state_lib
from ilct_jax.data import digits
from ilct_jax.evaluation import fid, fid_samples, image_files
from ilct_jax.models import inception

PyTree = Any
Config = ml_collections.ConfigDict


def ema_decay(config: Config) -> float:
  """The EMA decay evaluated: eval.ema_decay, or sample.ema_decay if < 0."""
  decay = config.eval.ema_decay
  return float(config.sample.ema_decay if decay < 0 else decay)


def _reference_command(config: Config, path: str) -> str:
  if config.data.source == "digits":
    cmd = "ilct_jax.evaluation.evaluate --config=<this config> --stats_out="
  else:
    cmd = (
      "ilct_jax.evaluation.features --inception=<.npz> "
      "--images=<real images> --out="
    )
  return f"python -m {cmd}{path} --features_out=<features.npy>"


def _check_files(config: Config) -> None:
  ev = config.eval  # Missing files are the usual error: name the command.
  if not ev.inception_path or not storage.isfile(ev.inception_path):
    raise FileNotFoundError(
      f"eval.inception_path={ev.inception_path!r} is not a file; download "
      "pytorch-fid's pt_inception-2015-12-05-6726825d.pth and run python -m "
      "ilct_jax.models.convert_inception --pth=<that file> "
      "--out=inception_fid.npz"
    )
  if not ev.ref_stats or not storage.isfile(ev.ref_stats):
    raise FileNotFoundError(
      f"eval.ref_stats={ev.ref_stats!r} is not a file; build the reference "
      f"statistics with {_reference_command(config, ev.ref_stats or 'S.npz')}"
    )
  if ev.ref_features and not storage.isfile(ev.ref_features):
    raise FileNotFoundError(
      f"eval.ref_features={ev.ref_features!r} is not a file; write it with "
      "--features_out of the command that built eval.ref_stats, or set ''"
    )
  if config.data.source != "digits" and not config.vae.path:
    raise ValueError(
      "eval decodes latents with the SD VAE but vae.path is empty; run "
      "python -m ilct_jax.models.convert_vae --src=<diffusers VAE> "
      "--out=DIR and set --config.vae.path=DIR"
    )


def check_eval_config(config: Config) -> None:
  """Fails fast, with one line naming the fix, if evaluation cannot run.

  The train loop calls this at start-up when `train.eval_every > 0`, so an
  incomplete `eval` group stops the run before training, not at the first
  evaluation; eval mode calls it before restoring.
  """
  ev, n = config.eval, jax.device_count()
  choices.check("eval.protocol", ev.protocol, tuple(image_files.PROTOCOLS))
  known = tuple(sampling.samplers(config))
  if not ev.samplers or any(s not in known for s in ev.samplers):
    raise ValueError(f"eval.samplers={tuple(ev.samplers)} must be in {known}")
  if ev.batch_size <= 0 or ev.batch_size % n:
    raise ValueError(
      f"eval.batch_size={ev.batch_size} does not divide over {n} devices; "
      f"use a multiple of {n}"
    )
  for field in ("num_samples", "train_num_samples"):
    if ev[field] < 2:
      raise ValueError(f"eval.{field}={ev[field]} must be >= 2 (FID needs 2)")
  if ev.inception_size < inception.MIN_SIZE:
    raise ValueError(
      f"eval.inception_size={ev.inception_size} is below the network's "
      f"minimum {inception.MIN_SIZE}; use 299 (pytorch-fid)"
    )
  decay, decays = ema_decay(config), tuple(config.ema.decays)
  if decay != 0 and not any(abs(decay - d) < 1e-12 for d in decays):
    raise ValueError(
      f"EMA decay {decay} is not tracked (ema.decays={decays}); set "
      "eval.ema_decay to one of them"
    )
  _check_files(config)


@functools.lru_cache(maxsize=4)
def _reference(stats: str, features: str) -> tuple[Any, Any, Any]:
  """(mu, sigma, features [N, D] or None), read once per run."""
  feats = None
  if features:
    try:
      feats = np.load(io.BytesIO(storage.read_bytes(features)))
    except (ValueError, OSError, EOFError) as e:
      raise ValueError(
        f"reference features {features} are not a readable .npy ({e}); "
        "write them again with --features_out"
      ) from None
  if feats is not None and feats.ndim != 2:
    raise ValueError(f"{features} is not an .npy of [N, D] features")
  return *fid.load_stats(stats), feats


def metrics_from_features(config: Config, feats: Any) -> dict[str, float]:
  """FID vs eval.ref_stats; precision/recall (k=3) vs eval.ref_features."""
  ev = config.eval
  mu_ref, sigma_ref, ref_feats = _reference(ev.ref_stats, ev.ref_features)
  out = {"fid": fid.frechet_to(feats, mu_ref, sigma_ref)}
  if ref_feats is not None:
    out["precision"], out["recall"] = fid.precision_recall(ref_feats, feats)
  return out


def evaluate_params(
  config: Config, params: PyTree, num: int, save_root: str | None = None
) -> dict[str, dict[str, Any]]:
  """{sampler: {fid, [precision, recall,] sigmas, nfe, seconds}} of params.

  `num` samples per sampler in eval.samplers; images are saved under
  save_root/<sampler>/ when save_root is given.
  """
  results = {}
  for name in config.eval.samplers:
    start, sigmas = time.perf_counter(), sampling.samplers(config)[name]
    logging.info("FID of %s: %d samples, sigmas %s", name, num, sigmas)
    save_dir = storage.join(save_root, name) if save_root else None
    feats = fid_samples.sample_features(config, params, name, num, save_dir)
    results[name] = metrics_from_features(config, feats)
    results[name].update(
      sigmas=list(sigmas),
      nfe=sum(s > config.ct.sigma_min for s in sigmas),
      seconds=time.perf_counter() - start,
    )
    logging.info("%s: %s", name, results[name])
  return results


def _scalars(prefix: str, results: dict[str, dict[str, Any]]) -> dict:
  return {
    f"{prefix}/{metric}_{name}": res[metric]
    for name, res in results.items()
    for metric in ("fid", "precision", "recall")
    if metric in res
  }


def run(config: Config, workdir: str) -> dict[str, Any]:
  """--mode=eval: one checkpoint's metrics to JSON and TensorBoard.

  Checkpoint eval.step (-1: latest), EMA `ema_decay(config)`; returns the
  record written to workdir/eval/metrics_<step>.json.
  """
  check_eval_config(config)
  ev, setup = config.eval, setup_lib.build(config)
  if ev.inception_size != inception.FID_SIZE:
    logging.warning("eval.inception_size != 299: FID not comparable to papers")
  step = None if ev.step < 0 else ev.step
  opened = runs.load_run(
    workdir,
    config=config,
    step=step,
    what="ema",
    ema_decay=ema_decay(config),
    mesh=setup.mesh,
    abstract=setup.abstract_state,
  )
  step, params = opened.step, opened.params
  out_dir = storage.join(workdir, "eval")
  save_root = storage.join(out_dir, str(step)) if ev.save_images else None
  record = dict(
    step=step,
    ema_decay=ema_decay(config),
    num_samples=ev.num_samples,
    seed=ev.seed,
    protocol=ev.protocol,
    saved_images=bool(ev.save_images),
    ref_stats=ev.ref_stats,
    ref_features=ev.ref_features,
    inception_size=ev.inception_size,
    samplers=evaluate_params(config, params, ev.num_samples, save_root),
  )
  if jax.process_index() == 0:
    path = storage.join(out_dir, f"metrics_{step}.json")
    storage.write_json(path, record, sort_keys=False)
    logging.info("Wrote %s", path)
  writers = reporting.Writers(workdir)
  writers.all.write_scalars(step, _scalars("eval", record["samplers"]))
  writers.close()
  return record


def train_time_fid(
  config: Config, state: state_lib.TrainState, step: int, writer: Any
) -> dict[str, float]:
  """Small-N FID during training; returns the scalars written at `step`.

  eval.train_num_samples per sampler, same EMA, seed and samplers as eval
  mode. Inception and the jitted functions are cached: only the first call
  compiles. `state` is not modified. Writes `train_eval/fid_<sampler>` (and
  precision/recall) to the clu `writer`. Call `check_eval_config` at
  start-up so that a missing file fails before training.
  """
  params = state.ema(ema_decay(config))
  with jax.transfer_guard("allow"):  # Samples and features cross to the host.
    results = evaluate_params(config, params, config.eval.train_num_samples)
  scalars = _scalars("train_eval", results)
  writer.write_scalars(step, scalars)
  return scalars


def dataset_reference(
  config: Config, stats_out: str, features_out: str = "", num: int = 0
) -> np.ndarray:
  """Writes FID statistics (and features) of the first `num` digits (0: all).

  The data take the samples' decode / quantize / feature path (never JPEG).
  Latent datasets use real images instead: python -m
  ilct_jax.evaluation.features. Returns the [num, 2048] features.
  """
  if config.data.source != "digits":
    raise ValueError(
      f"data.source={config.data.source!r} has no built-in images; build "
      f"the reference with {_reference_command(config, stats_out)}"
    )
  data = digits.load_digits(config.data.image_size)
  num = num or data.shape[0]
  if not 2 <= num <= data.shape[0]:
    raise ValueError(f"num={num} must be in [2, {data.shape[0]}] (digits)")
  feats = fid_samples.data_features(config, data[:num])
  fid.save_stats(stats_out, *fid.stats_from_features(feats))
  if features_out:
    storage.save_npy(features_out, feats)
  return feats


def main(argv: list[str]) -> None:
  """CLI: reference statistics of the config's pixel dataset."""
  del argv
  cfg = flags.FLAGS
  jax.config.update("jax_threefry_partitionable", True)
  parallel.start_cluster(cfg)
  feats = dataset_reference(
    cfg.config, cfg.stats_out, cfg.features_out, cfg.num
  )
  print(f"Wrote {cfg.stats_out} ({feats.shape[0]} images)")


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file.")
  flags.DEFINE_string("stats_out", None, "Output .npz with mu and sigma.")
  flags.DEFINE_string("features_out", "", "Optional .npy of the features.")
  flags.DEFINE_integer("num", 0, "Use the first N examples (0: all).")
  parallel.define_cluster_flags()
  flags.mark_flags_as_required(["config", "stats_out"])
  from ilct_jax import config_files

  config_files.resolve_sys_argv()
  app.run(main)
