"""Parity of the Flax FID InceptionV3 and fid.py with pytorch-fid (torch CPU).

pytorch-fid's `InceptionV3` is built live with random weights: its URL loader
is replaced by one that returns a random torchvision state dict (the FID
blocks only override `forward`, so the names and shapes are the same), the
BatchNorm running statistics are calibrated on a batch and then perturbed,
and the state dict is saved as a `.pth`, converted with `convert_inception`
and loaded into the Flax model. Nothing is downloaded.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip(
  "torch", reason="parity needs torch: pip install -e .[test]"
)
torchvision = pytest.importorskip(
  "torchvision", reason="parity needs torchvision: pip install -e .[test]"
)
pfi = pytest.importorskip(
  "pytorch_fid.inception", reason="parity needs pytorch-fid==0.3.0 (test)"
)
fid_score = pytest.importorskip(
  "pytorch_fid.fid_score", reason="parity needs pytorch-fid==0.3.0 (test)"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ilct_jax.evaluation import features, fid  # noqa: E402
from ilct_jax.models import convert_inception, inception  # noqa: E402
from tests import cluster  # noqa: E402

TOL = 1e-4  # Issue 6: pool3 relative error <= 1e-4 in float32.


def _random_fid_inception() -> tuple[object, object]:
  """pytorch-fid's InceptionV3 and its inner torchvision net, random weights."""
  torch.manual_seed(0)
  plain = torchvision.models.inception_v3(
    num_classes=1008, aux_logits=False, weights=None, init_weights=False
  )
  inner = {}

  def capture():
    inner["net"] = build()
    return inner["net"]

  build = pfi.fid_inception_v3
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(
      pfi, "load_state_dict_from_url", lambda *a, **k: plain.state_dict()
    )
    mp.setattr(pfi, "fid_inception_v3", capture)
    model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
  net = inner["net"]  # Shares its submodules with `model.blocks`.
  bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for bn in bns:  # Calibrate: running stats = one batch's stats.
      bn.reset_running_stats()
      bn.momentum = None
    model.train()
    model(torch.rand(2, 3, 139, 139))  # Small: only the scale matters.
    for bn in bns:  # Then randomize every BatchNorm tensor.
      bn.weight.uniform_(0.5, 1.5)
      bn.bias.normal_(0.0, 0.1)
      bn.running_mean.add_(
        0.1 * bn.running_var.sqrt() * torch.randn_like(bn.running_mean)
      )
      bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.8, 1.25))
  return model.eval(), net.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  model, net = _random_fid_inception()
  pth = str(tmp_path_factory.mktemp("inc") / "pt_inception-random.pth")
  torch.save(net.state_dict(), pth)
  out = pth.replace(".pth", ".npz")
  convert_inception.convert(pth, out)
  module, variables = convert_inception.load_inception(out)
  return model, net, module, variables, pth


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  """(max abs error / max |ref|, ||error|| / ||ref||)."""
  err = np.asarray(ours, np.float64) - ref
  return (
    float(np.abs(err).max() / np.abs(ref).max()),
    float(np.linalg.norm(err) / np.linalg.norm(ref)),
  )


def _torch_pool3_logits(model, net, images_nchw):
  with torch.no_grad():
    pool3 = model(torch.from_numpy(images_nchw))[0][:, :, 0, 0]
    return pool3.numpy(), net.fc(pool3).numpy()


def test_feature_fn_uint8_256_matches_pytorch_fid(models):
  model, net, module, variables, _ = models
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
  ours = np.asarray(features.feature_fn(module, variables)(images))
  # pytorch-fid's pipeline: ToTensor (x / 255, NCHW) -> InceptionV3.
  x = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
  ref, _ = _torch_pool3_logits(model, net, x)
  max_rel, norm_rel = _rel_err(ours, ref)
  print(f"pool3 256x256 uint8: max rel {max_rel:.2e}, norm rel {norm_rel:.2e}")
  assert ours.shape == (2, 2048) and ref.std() > 1e-2  # Not degenerate.
  assert max_rel <= TOL and norm_rel <= TOL


def test_module_pool3_and_logits_match_on_nonsquare_downsample(models):
  model, net, module, variables, _ = models
  rng = np.random.default_rng(1)
  images = rng.random((2, 3, 320, 340), dtype=np.float32)
  ref_pool3, ref_logits = _torch_pool3_logits(model, net, images)
  out = jax.jit(module.apply)(variables, images.transpose(0, 2, 3, 1))
  for name, ref in (("pool3", ref_pool3), ("logits", ref_logits)):
    max_rel, norm_rel = _rel_err(out[name], ref)
    print(f"{name} 320x340: max rel {max_rel:.2e}, norm rel {norm_rel:.2e}")
    assert max_rel <= TOL and norm_rel <= TOL


@pytest.mark.parametrize("hw", [(256, 256), (512, 400), (37, 50), (299, 299)])
def test_resize_matches_interpolate_bilinear(hw):
  x = np.random.default_rng(2).random((2, 3, *hw), dtype=np.float32)
  ref = torch.nn.functional.interpolate(
    torch.from_numpy(x), size=(299, 299), mode="bilinear", align_corners=False
  ).numpy()
  ours = inception.resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), atol=2e-6)


def test_frechet_distance_matches_pytorch_fid():
  rng = np.random.default_rng(3)
  for n, d, shift in ((500, 64, 0.1), (300, 32, 2.0), (1000, 8, 0.0)):
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    b = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + shift
    stats = [*fid.stats_from_features(a), *fid.stats_from_features(b)]
    ref = fid_score.calculate_frechet_distance(*stats)
    ours = fid.frechet_distance(*stats)
    assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref)), (n, d, ours, ref)


def test_frechet_fallback_matches_pytorch_fid(monkeypatch):
  """Both take the eps path when the first root is not finite."""
  real_sqrtm = fid_score.linalg.sqrtm
  calls = []

  def nan_first(a, **kwargs):  # pytorch-fid's first call passes disp=False.
    calls.append(a)
    if len(calls) % 2 == 1:
      nan = np.full_like(a, np.nan)
      return (nan, np.inf) if kwargs.get("disp") is False else nan
    return real_sqrtm(a)

  monkeypatch.setattr(fid_score.linalg, "sqrtm", nan_first)  # scipy.linalg.
  rng = np.random.default_rng(5)
  stats = [
    *fid.stats_from_features(rng.standard_normal((40, 30))),
    *fid.stats_from_features(rng.standard_normal((40, 30)) + 0.3),
  ]
  ref = fid_score.calculate_frechet_distance(*stats, eps=1e-3)
  with pytest.warns(UserWarning, match="singular"):
    ours = fid.frechet_distance(*stats, eps=1e-3)
  assert len(calls) == 4 and abs(ours - ref) <= 1e-6 * abs(ref)


def test_saved_stats_are_read_by_pytorch_fid(tmp_path):
  feats = np.random.default_rng(4).standard_normal((50, 16))
  mu, sigma = fid.stats_from_features(feats)
  path = str(tmp_path / "stats.npz")
  fid.save_stats(path, mu, sigma)
  # pytorch-fid's own reader of precomputed statistics.
  ref_mu, ref_sigma = fid_score.compute_statistics_of_path(
    path, None, 1, 16, "cpu"
  )
  np.testing.assert_array_equal(ref_mu, mu)
  np.testing.assert_array_equal(ref_sigma, sigma)


def test_converter_is_strict(models):
  *_, pth = models
  state = convert_inception.read_pth(pth)
  missing = {k: v for k, v in state.items() if k != "fc.bias"}
  with pytest.raises(ValueError, match=r"missing \['fc.bias'\]"):
    convert_inception.convert_state_dict(missing)
  extra = {**state, "AuxLogits.fc.weight": np.zeros((1008, 768))}
  with pytest.raises(ValueError, match="unexpected.*AuxLogits"):
    convert_inception.convert_state_dict(extra)
  bad = {**state, "fc.weight": np.zeros((1000, 2048))}
  with pytest.raises(ValueError, match="fc.weight has shape"):
    convert_inception.convert_state_dict(bad)


def test_legacy_pth_format_and_cli(models, tmp_path):
  """Pre-1.6 (non-zip) .pth files read too; the CLI writes a loadable .npz."""
  *_, variables, pth = models
  legacy = str(tmp_path / "legacy.pth")
  state = torch.load(pth, weights_only=True)
  torch.save(state, legacy, _use_new_zipfile_serialization=False)
  out = str(tmp_path / "cli.npz")
  cmd = [sys.executable, "-m", "ilct_jax.models.convert_inception"]
  cmd += [f"--pth={legacy}", f"--out={out}"]
  env = cluster.env(devices=1)
  result = subprocess.run(cmd, env=env, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  _, loaded = convert_inception.load_inception(out)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_hash_in_file_name_is_checked(models, tmp_path):
  *_, pth = models
  named = tmp_path / "pt_inception-2015-12-05-00000000.pth"
  os.symlink(pth, named)
  with pytest.raises(ValueError, match="does not start with the 00000000"):
    convert_inception.read_pth(str(named))
