"""Tests of ilct_jax/fid.py, the Flax InceptionV3 and its checkpoint format.

No PyTorch here: parity with pytorch-fid is in inception_parity_test.py. The
network runs with random weights (`inception.init_variables`).
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from ilct_jax.evaluation import features, fid
from ilct_jax.lab import bench_parts
from ilct_jax.models import convert_inception, inception
from tests import cluster


@pytest.fixture(scope="module")
def net():
  module = inception.InceptionV3()
  return module, inception.init_variables(module)


def _gaussian_feats(rng, n, d, shift=0.0):
  mix = rng.standard_normal((d, d)) / np.sqrt(d)
  return rng.standard_normal((n, d)) @ mix + shift


# --- Frechet distance -------------------------------------------------------


def _closed_form(mu1, s1, mu2, s2):
  """|mu1 - mu2|^2 + Tr(s1 + s2) - 2 Tr sqrt(s1^1/2 s2 s1^1/2) via eigh."""
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(w)) @ v.T
  inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
  tr_sqrt = np.sum(np.sqrt(np.clip(inner, 0, None)))
  return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt


def test_frechet_distance_diagonal_closed_form():
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
  v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
  # Commuting covariances: d = |dmu|^2 + sum (sqrt v1 - sqrt v2)^2 = 5 + 2.
  d = fid.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  assert d == pytest.approx(7.0, abs=1e-10)


def test_frechet_distance_general_closed_form():
  rng = np.random.default_rng(0)
  a, b = rng.standard_normal((2, 16, 16))
  s1, s2 = a @ a.T + 0.1 * np.eye(16), b @ b.T + 0.1 * np.eye(16)
  mu1, mu2 = rng.standard_normal((2, 16))
  want = _closed_form(mu1, s1, mu2, s2)
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, 1e-9)


def test_self_fid_is_zero():
  mu, sigma = fid.stats_from_features(
    _gaussian_feats(np.random.default_rng(1), 500, 64)
  )
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_grows_monotonically_with_noise():
  rng = np.random.default_rng(2)
  x = _gaussian_feats(rng, 2000, 32)
  noise = rng.standard_normal(x.shape)
  stats = fid.stats_from_features(x)
  fids = [
    fid.frechet_distance(*stats, *fid.stats_from_features(x + s * noise))
    for s in (0.0, 0.05, 0.2, 0.5, 1.0, 2.0)
  ]
  assert abs(fids[0]) < 1e-8
  assert all(b > a for a, b in zip(fids, fids[1:])), fids


def test_stats_match_numpy_float64():
  feats = np.random.default_rng(3).standard_normal((20, 5)).astype(np.float32)
  mu, sigma = fid.stats_from_features(feats)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
  centred = feats.astype(np.float64) - mu
  np.testing.assert_allclose(sigma, centred.T @ centred / 19, rtol=1e-12)


def test_stats_npz_round_trip_and_errors(tmp_path):
  mu, sigma = fid.stats_from_features(np.random.default_rng(4).random((9, 4)))
  path = str(tmp_path / "sub" / "stats.npz")
  fid.save_stats(path, mu, sigma)
  mu2, sigma2 = fid.load_stats(path)
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)
  with pytest.raises(
    FileNotFoundError, match="FID statistics .* not found; build them"
  ):
    fid.load_stats(str(tmp_path / "none.npz"))
  np.savez(tmp_path / "bad.npz", mu=mu)
  with pytest.raises(ValueError, match=r"lacks \['sigma'\]"):
    fid.load_stats(str(tmp_path / "bad.npz"))
  np.savez(tmp_path / "shape.npz", mu=mu, sigma=sigma[:3])
  with pytest.raises(ValueError, match=r"sigma \[D, D\], got \(4,\)"):
    fid.load_stats(str(tmp_path / "shape.npz"))


def test_frechet_fallback_and_imaginary_check(monkeypatch):
  s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 1.0])
  real_sqrtm = fid.linalg.sqrtm
  calls = []

  def nan_first(a):  # A non-finite first root triggers the eps fallback.
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(fid.linalg, "sqrtm", nan_first)
  with pytest.warns(UserWarning, match="adding 0.5 to the diagonals"):
    d = fid.frechet_distance(np.zeros(2), s1, np.zeros(2), s2, eps=0.5)
  np.testing.assert_allclose(
    calls[1], (s1 + 0.5 * np.eye(2)) @ (s2 + 0.5 * np.eye(2))
  )
  # Tr sqrt((s1 + eps)(s2 + eps)) = 2 * sqrt(1.5 * 4.5); traces are unshifted.
  assert d == pytest.approx(10.0 - 4.0 * np.sqrt(1.5 * 4.5), abs=1e-12)
  monkeypatch.setattr(fid.linalg, "sqrtm", lambda a: a + 0.1j * np.eye(2))
  with pytest.raises(ValueError, match="imaginary component of 0.1"):
    fid.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)


def test_frechet_and_stats_bad_input():
  with pytest.raises(ValueError, match="Statistics differ in size"):
    fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="N >= 2"):
    fid.stats_from_features(np.zeros((1, 8)))


# --- Precision / recall -----------------------------------------------------


def _brute_pr(real, fake, k):
  def d2(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

  r_real = np.sort(d2(real, real), axis=1)[:, k]
  r_fake = np.sort(d2(fake, fake), axis=1)[:, k]
  precision = np.mean((d2(fake, real) <= r_real[None]).any(1))
  recall = np.mean((d2(real, fake) <= r_fake[None]).any(1))
  return precision, recall


def test_precision_recall_matches_brute_force_with_ragged_blocks():
  rng = np.random.default_rng(5)
  real = rng.standard_normal((53, 6)).astype(np.float32)
  fake = (1.3 * rng.standard_normal((41, 6)) + 0.4).astype(np.float32)
  want = _brute_pr(real.astype(np.float64), fake.astype(np.float64), 3)
  got = fid.precision_recall(real, fake, k=3, block=16)  # 53, 41 % 16 != 0.
  assert got == pytest.approx(want, abs=1e-12)
  assert 0.2 < got[0] < 1.0 and 0.2 < got[1] < 1.0  # A non-trivial case.


def test_precision_recall_identical_and_mode_collapse():
  rng = np.random.default_rng(6)
  real = rng.standard_normal((300, 16))
  assert fid.precision_recall(real, real.copy()) == (1.0, 1.0)
  # Mode collapse: every fake is a tiny perturbation of one of 3 real points.
  modes = real[rng.integers(0, 3, 300)]
  collapsed = modes + 1e-3 * rng.standard_normal(modes.shape)
  precision, recall = fid.precision_recall(real, collapsed)
  assert precision == 1.0  # The fakes still lie on the real manifold...
  assert recall <= 0.02  # ...but cover almost none of it.
  far = fid.precision_recall(real, real + 100.0)
  assert far == (0.0, 0.0)


def test_precision_recall_bad_input():
  with pytest.raises(ValueError, match="N, M > k=3"):
    fid.precision_recall(np.zeros((3, 4)), np.zeros((10, 4)))
  with pytest.raises(ValueError, match="same|got"):
    fid.precision_recall(np.zeros((10, 4)), np.zeros((10, 5)))


# --- Network, features, checkpoint -----------------------------------------


def test_inception_shapes_at_299_and_other_sizes(net):
  module, variables = net
  f = features.feature_fn(module, variables)
  x299 = np.random.default_rng(7).integers(0, 256, (1, 299, 299, 3), np.uint8)
  feats = np.asarray(f(x299))
  assert feats.shape == (1, 2048) and np.isfinite(feats).all()
  assert (feats >= 0).all() and feats.std() > 0  # Mean of ReLU maps.
  # Without the resize the network is fully convolutional down to 75x75.
  small = module.clone(resize_input=False)
  out = jax.jit(small.apply)(variables, np.zeros((2, 75, 90, 3), np.float32))
  assert out["pool3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)


def test_resize_is_identity_at_299_and_half_pixel_centred():
  x = np.random.default_rng(8).random((1, 299, 299, 3)).astype(np.float32)
  np.testing.assert_array_equal(inception.resize_bilinear(x), x)
  # A constant image stays constant at any scale (weights sum to 1).
  const = np.full((1, 40, 600, 3), 0.3, np.float32)
  np.testing.assert_allclose(inception.resize_bilinear(const), 0.3, atol=1e-6)
  # 2x downsample with half-pixel centres averages each pixel pair exactly.
  ramp = np.arange(598, dtype=np.float32)[None, None, :, None]
  ramp = np.broadcast_to(ramp, (1, 598, 598, 3))
  out = np.asarray(inception.resize_bilinear(ramp))[0, 0, :, 0]
  np.testing.assert_allclose(out, np.arange(299) * 2 + 0.5, atol=1e-4)


def test_feature_and_module_bad_input(net):
  module, variables = net
  f = features.feature_fn(module, variables)
  with pytest.raises(ValueError, match="uint8 RGB images .*float32"):
    f(np.zeros((1, 64, 64, 3), np.float32))
  with pytest.raises(ValueError, match=r"\(1, 3, 64, 64\); convert"):
    f(np.zeros((1, 3, 64, 64), np.uint8))
  small = module.clone(resize_input=False)
  with pytest.raises(ValueError, match="H, W >= 75.*enable resize_input"):
    small.apply(variables, np.zeros((1, 32, 32, 3), np.float32))


def _torch_layout_state(variables):
  """The pytorch-fid state dict that converts to `variables` (inverse map)."""
  state = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    path = tuple(k.key for k in path)
    value = np.asarray(leaf)
    if value.ndim == 4:
      value = value.transpose(3, 2, 0, 1)
    elif value.ndim == 2:
      value = value.T
    state[convert_inception._torch_name(path)] = value
  return state


def test_checkpoint_round_trip_and_strictness(net, tmp_path):
  module, variables = net
  state = _torch_layout_state(variables)
  assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
  assert state["Conv2d_1a_3x3.bn.running_var"].shape == (32,)
  state["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(7)  # Ignored.
  converted = convert_inception.convert_state_dict(state)
  path = str(tmp_path / "inception.npz")
  convert_inception.save_variables(path, converted)
  loaded_module, loaded = convert_inception.load_inception(path)
  assert loaded_module == module
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(variables))
  del state["fc.bias"]
  with pytest.raises(ValueError, match=r"missing \['fc.bias'\]"):
    convert_inception.convert_state_dict(state)
  with pytest.raises(
    FileNotFoundError, match="run python -m ilct_jax.models.conv"
  ):
    convert_inception.load_inception(str(tmp_path / "absent.npz"))
  np.savez(tmp_path / "partial.npz", **{"params/fc/bias": np.zeros(1008)})
  with pytest.raises(ValueError, match="does not match the FID InceptionV3"):
    convert_inception.load_inception(str(tmp_path / "partial.npz"))


# --- Reference statistics ---------------------------------------------------


# Every forward below uses [2, 256, 256, 3] uint8 batches, the paper's image
# size, so they share one compiled executable (`fid._pool3` is keyed on the
# module's fields and the shapes).
BATCH = 2


@pytest.fixture(scope="module")
def three_images(net):
  """Three 256x256 images and their features (2 batches, the last padded)."""
  images = np.random.default_rng(9).integers(0, 256, (3, 256, 256, 3), np.uint8)
  f = features.feature_fn(*net)
  padded = np.concatenate([images, images[-1:]])
  feats = np.concatenate([f(padded[:BATCH]), f(padded[BATCH:])])[:3]
  return images, feats


def _write_images(folder, n, size=(256, 256), seed=9):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, size[1], size[0], 3), np.uint8)
  os.makedirs(folder, exist_ok=True)
  for i, img in enumerate(images):
    Image.fromarray(img).save(os.path.join(folder, f"{i:03d}.png"))
  return images


def test_reference_stats_from_folder(net, three_images, tmp_path):
  module, variables = net
  images, want = three_images
  assert (_write_images(tmp_path / "imgs", 3) == images).all()
  (tmp_path / "imgs" / "notes.txt").write_text("not an image")
  mu, sigma, feats = features.reference_stats_from_folder(
    str(tmp_path / "imgs"), module, variables, batch_size=BATCH
  )
  # PNG is lossless: the features equal those of the arrays (3 = 2 + 1 + pad).
  np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mu, want.astype(np.float64).mean(0), rtol=1e-5)
  assert sigma.shape == (2048, 2048)


def _tiny_tfds_builder(images):
  """Registers a 3-image tfds dataset generated locally (no download)."""
  import tensorflow_datasets as tfds

  class TinyFidImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      image = tfds.features.Image(shape=images.shape[1:])
      features = tfds.features.FeaturesDict({"image": image})
      return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, img in enumerate(images):
        yield i, {"image": img}

  return TinyFidImages


def test_reference_stats_from_tfds(net, three_images, tmp_path):
  module, variables = net
  images, want = three_images
  builder_cls = _tiny_tfds_builder(images)
  with pytest.raises(FileNotFoundError, match="not prepared.*tfds build"):
    features.reference_stats_from_tfds(
      "tiny_fid_images", "train", str(tmp_path / "none"), module, variables
    )
  builder_cls(data_dir=str(tmp_path)).download_and_prepare()
  mu, _, feats = features.reference_stats_from_tfds(
    "tiny_fid_images", "train", str(tmp_path), module, variables, BATCH
  )
  np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(mu, want.astype(np.float64).mean(0), rtol=1e-5)


def test_reference_stats_folder_errors(net, tmp_path):
  module, variables = net
  with pytest.raises(FileNotFoundError, match="does not exist"):
    features.reference_stats_from_folder(
      str(tmp_path / "no"), module, variables
    )
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no .*jpg.*png"):
    features.reference_stats_from_folder(
      str(tmp_path / "empty"), module, variables
    )
  _write_images(tmp_path / "mixed", 2, size=(64, 48))
  Image.new("RGB", (32, 32)).save(tmp_path / "mixed" / "999.jpg")
  with pytest.raises(ValueError, match="999.jpg is .*resize the folder"):
    features.reference_stats_from_folder(
      str(tmp_path / "mixed"), module, variables
    )


def test_cli_writes_stats_that_load(net, tmp_path):
  module, variables = net
  ckpt = str(tmp_path / "inception.npz")
  convert_inception.save_variables(ckpt, variables)
  _write_images(tmp_path / "imgs", 2, size=(80, 80))
  out = str(tmp_path / "stats.npz")
  cmd = [
    sys.executable, "-m", "ilct_jax.evaluation.features", f"--inception={ckpt}",
    f"--images={tmp_path / 'imgs'}", f"--out={out}", "--batch_size=2",
  ]  # fmt: skip
  env = cluster.env(devices=1)
  result = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (
    "FID features: 2/2 images" in result.stdout and "Wrote" in result.stdout
  )
  mu, sigma = fid.load_stats(out)
  assert mu.shape == (2048,) and sigma.shape == (2048, 2048)


def test_benchmark_reports_rates():
  result = bench_parts.time_fid_features(batch=BATCH, repeats=1)
  assert result["images_per_s"] > 0 and result["compile_s"] > 0
  assert result["projected_50k_s"] == pytest.approx(
    50_000 / result["images_per_s"]
  )
