"""Evaluation end to end on the tiny config (evaluate.py, fid_samples.py).

A random InceptionV3 is saved in the converter's format and the reference is
the first 64 digits through the eval path. pytorch-fid resizes to 299; here
`eval.inception_size = 75` (the network's minimum) makes Inception ~16x
cheaper on CPU. The code path is the same at 299 (resize_bilinear, then the
network without its own resize, which is what `resize_input=True` does);
299 parity with pytorch-fid is in inception_parity_test.py.
"""

import glob
import io
import json
import math
import os
import types

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from ilct_jax import checkpointing, parallel, rng, sampling, train
from ilct_jax import state as state_lib
from ilct_jax.data import digits
from ilct_jax.evaluation import (
  evaluate,
  features,
  fid,
  fid_samples,
  image_files,
)
from ilct_jax.models import convert_inception, inception

NUM_REF = 64


def _untrained_state(config):
  """A state with random weights (std 0.1), built from shapes: no compile.

  Random rather than initial weights: the zero-initialized output convs of a
  fresh UNet would make every sample the same constant image.
  """
  abstract = state_lib.abstract_state(config)
  rng = np.random.default_rng(1)
  zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  params = jax.tree.map(
    lambda a: (0.1 * rng.standard_normal(a.shape)).astype(a.dtype),
    abstract.params,
  )
  state = zeros.replace(
    params=params, ema_params=tuple(params for _ in abstract.ema_params)
  )
  return state  # Host arrays: saving them skips an 8-device compile.


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  from configs import tiny

  root = tmp_path_factory.mktemp("eval")
  module = inception.InceptionV3()
  inception_path = str(root / "inception_fid.npz")
  convert_inception.save_variables(
    inception_path, inception.init_variables(module)
  )
  config = tiny.get_config()
  ev = config.eval
  ev.inception_path = inception_path
  ev.inception_size = inception.MIN_SIZE
  ev.batch_size, ev.num_samples, ev.train_num_samples = 32, 64, 32
  ev.ref_stats = str(root / "digits_stats.npz")
  ev.ref_features = str(root / "digits_features.npy")
  ref_feats = evaluate.dataset_reference(
    config, ev.ref_stats, ev.ref_features, NUM_REF
  )
  mesh = parallel.make_mesh()
  state = _untrained_state(config)
  workdir = str(root / "run")
  mngr = checkpointing.create_manager(workdir, config.train)
  meta = train.run_meta(config, 1797)
  checkpointing.save(mngr, state, meta, step=5, force=True)
  mngr.wait_until_finished()
  state = jax.device_put(state, NamedSharding(mesh, P()))  # As in training.
  data = digits.load_digits(config.data.image_size)
  real = fid_samples.data_features(config, data[:NUM_REF])
  return types.SimpleNamespace(
    config=config,
    workdir=workdir,
    state=state,
    mesh=mesh,
    ref_feats=ref_feats,
    real_feats=real,
    data=data,
  )


def test_real_vs_real_fid_is_zero_and_matches_host_path(env):
  config = env.config
  # Independent host path: numpy quantization and tiling, then features.
  data = digits.load_digits(config.data.image_size)[:NUM_REF]
  images = np.repeat(np.asarray(image_files.to_uint8(data)), 3, axis=-1)
  f = features.load_feature_fn(config.eval.inception_path, inception.MIN_SIZE)
  host = features.extract_features(
    [images[:32], images[32:]], f, 32, None, None
  )
  np.testing.assert_allclose(env.real_feats, host, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(env.ref_feats, host, rtol=1e-5, atol=1e-5)
  m = evaluate.metrics_from_features(config, env.real_feats)
  assert abs(m["fid"]) < 1e-3 * np.trace(np.cov(host, rowvar=False))
  assert m["precision"] == 1.0 and m["recall"] == 1.0


def test_eval_mode_end_to_end_png_fused(env):
  config = env.config.copy_and_resolve_references()
  config.eval.save_images = True  # png protocol: one fused program a batch.
  record = evaluate.run(config, env.workdir)
  with open(os.path.join(env.workdir, "eval", "metrics_5.json")) as f:
    assert json.load(f) == json.loads(json.dumps(record))
  assert record["step"] == 5 and record["ema_decay"] == 0.9
  real_fid = evaluate.metrics_from_features(config, env.real_feats)["fid"]
  held_out = fid_samples.data_features(config, env.data[64:96])
  held_out_fid = evaluate.metrics_from_features(config, held_out)["fid"]
  assert abs(real_fid) < 1e-3 < held_out_fid  # Other digits: FID > 0.
  for name, nfe in (("onestep", 1), ("twostep", 2)):
    res = record["samplers"][name]
    assert res["nfe"] == nfe
    assert math.isfinite(res["fid"]) and res["fid"] > held_out_fid
    assert 0.0 <= res["precision"] <= 1.0 and 0.0 <= res["recall"] <= 1.0
    pngs = sorted(glob.glob(os.path.join(env.workdir, "eval/5", name, "*")))
    assert len(pngs) == 64 and pngs[-1].endswith("000063.png")
    img = np.asarray(Image.open(pngs[0]))
    assert img.shape == (8, 8, 3) and (img[..., 0] == img[..., 2]).all()
  assert _tensorboard_scalars(env.workdir)[(5, "eval/fid_twostep")] == (
    pytest.approx(record["samplers"]["twostep"]["fid"], rel=1e-6)
  )
  # The fused program's features are those of the saved (lossless) images.
  pngs = sorted(glob.glob(os.path.join(env.workdir, "eval/5/onestep/*")))
  saved = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
  f = features.load_feature_fn(config.eval.inception_path, inception.MIN_SIZE)
  feats = fid_samples.sample_features(config, env.state.ema(0.9), "onestep", 64)
  np.testing.assert_allclose(feats, f(saved), rtol=1e-4, atol=1e-4)


def _tensorboard_scalars(workdir):
  import tensorflow as tf  # clu's writer already imported it.

  out = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        out[(event.step, v.tag)] = float(tf.make_ndarray(v.tensor))
  return out


def test_paper_protocol_jpeg_uneven_batches(env):
  config = env.config.copy_and_resolve_references()
  config.eval.protocol, config.eval.num_samples = "paper", 40
  config.eval.samplers = ("onestep",)
  params = env.state.ema(0.9)
  save_dir = os.path.join(env.workdir, "jpeg")
  feats = fid_samples.sample_features(config, params, "onestep", 40, save_dir)
  jpgs = sorted(glob.glob(os.path.join(save_dir, "*")))
  assert len(jpgs) == 40 and jpgs[-1].endswith("000039.jpg")
  assert feats.shape == (40, 2048)
  jpeg = []
  for path in jpgs[:32]:
    with Image.open(path) as img:
      assert img.format == "JPEG"
      jpeg.append(np.asarray(img.convert("RGB")))
  jpeg = np.stack(jpeg)
  # FID saw the JPEG pixels, not the generated uint8 ones ...
  f = features.load_feature_fn(config.eval.inception_path, inception.MIN_SIZE)
  np.testing.assert_allclose(feats[:32], f(jpeg), rtol=1e-5, atol=1e-5)
  # ... which JPEG changed a little from the truncated uint8 samples (the
  # same seed: the same samples), made here on the host.
  u8 = _onestep_uint8(config, params, "truncate")
  diff = np.abs(jpeg.astype(int) - u8).mean()
  assert 0 < diff < 20
  for i in (0, 17):  # Each file is PIL's default JPEG of those pixels.
    with open(jpgs[i], "rb") as f:
      assert f.read() == _pil_jpeg(u8[i].astype(np.uint8))


def _pil_jpeg(image) -> bytes:
  """The authors' save: Image.fromarray(x).save(path) (PIL's defaults)."""
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG")
  return buf.getvalue()


def _onestep_uint8(config, params, rounding):
  """The first generated batch, quantized on the host."""
  sigmas = sampling.samplers(config)["onestep"]
  mesh = parallel.make_mesh()
  shape = (config.eval.batch_size, *state_lib.example_shape(config))
  gen = sampling.make_sampler(
    state_lib.create_model(config), config.ct, shape, sigmas
  )
  key = jax.random.fold_in(rng.stream(config.eval.seed, "eval"), 0)
  x = gen(params, jax.random.fold_in(key, 0))
  del mesh
  u8 = np.asarray(image_files.to_uint8(x, rounding))
  return np.repeat(u8, 3, axis=-1).astype(int)


def test_train_time_fid_logs_and_reuses_compiled_functions(env):
  class Writer:
    def __init__(self):
      self.calls = []

    def write_scalars(self, step, scalars):
      self.calls.append((step, dict(scalars)))

  writer = Writer()
  first = evaluate.train_time_fid(env.config, env.state, 7, writer)
  misses = (
    features.load_feature_fn.cache_info().misses,
    fid_samples._program.cache_info().misses,
  )
  second = evaluate.train_time_fid(env.config, env.state, 8, writer)
  assert misses == (
    features.load_feature_fn.cache_info().misses,
    fid_samples._program.cache_info().misses,
  )
  keys = {
    f"train_eval/{m}_{s}"
    for m in ("fid", "precision", "recall")
    for s in ("onestep", "twostep")
  }
  assert set(first) == keys and all(math.isfinite(v) for v in first.values())
  assert first == second  # Fixed seed: the same samples each time.
  assert [c[0] for c in writer.calls] == [7, 8]


def test_missing_files_and_bad_config_fail_clearly(env, tmp_path):
  config = env.config.copy_and_resolve_references()
  evaluate.check_eval_config(config)  # The complete config passes.
  config.eval.ref_stats = str(tmp_path / "absent.npz")
  with pytest.raises(
    FileNotFoundError,
    match="ref_stats=.*absent.npz.*python -m "
    "ilct_jax.evaluation.evaluate --config",
  ):
    evaluate.run(config, env.workdir)
  latent = config.copy_and_resolve_references()
  latent.data.source = "latents"
  with pytest.raises(
    FileNotFoundError, match="python -m ilct_jax.evaluation.features "
  ):
    evaluate.check_eval_config(latent)
  cases = [
    ("inception_path", str(tmp_path / "x.npz"), "convert_inception --pth"),
    ("ref_features", str(tmp_path / "f.npy"), "ref_features=.*--features_out"),
    ("protocol", "jpeg", "eval.protocol='jpeg' is unknown; choose one of"),
    ("batch_size", 12, "does not divide over 8 devices"),
    ("samplers", ("threestep",), "must be in"),
    ("ema_decay", 0.5, "0.5 is not tracked"),
    ("train_num_samples", 1, "must be >= 2"),
    ("inception_size", 64, "minimum 75; use 299"),
  ]
  for field, value, message in cases:
    bad = env.config.copy_and_resolve_references()
    bad.eval[field] = value
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      evaluate.check_eval_config(bad)
  no_vae = env.config.copy_and_resolve_references()
  no_vae.data.source = "latents"
  with pytest.raises(ValueError, match="vae.path is empty.*convert_vae"):
    evaluate.check_eval_config(no_vae)
  np.save(tmp_path / "bad.npy", np.zeros(3))
  bad = env.config.copy_and_resolve_references()
  bad.eval.ref_features = str(tmp_path / "bad.npy")
  with pytest.raises(ValueError, match="not an .npy of \\[N, D\\] features"):
    evaluate.metrics_from_features(bad, env.real_feats)


def test_frechet_low_rank_route_matches_closed_form():
  rng = np.random.default_rng(0)
  ref = rng.standard_normal((100, 32)) @ rng.standard_normal((32, 32)) / 6
  mu_ref, sigma_ref = ref.mean(0), np.cov(ref, rowvar=False)
  for n in (5, 20, 32, 50):  # N <= D: n x n eigh route; N > D: sqrtm route.
    x = rng.standard_normal((n, 32)) + 0.3
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    w, v = np.linalg.eigh(sigma_ref)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.clip(np.linalg.eigvalsh(root @ sigma @ root), 0, None)
    want = np.sum((mu - mu_ref) ** 2) + np.trace(sigma) + np.trace(sigma_ref)
    want -= 2 * np.sum(np.sqrt(inner))
    got = fid.frechet_to(x, mu_ref, sigma_ref)
    assert got == pytest.approx(want, rel=1e-6)
