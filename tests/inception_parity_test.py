"""Parity of the Flax FID InceptionV3 and fid.py with pytorch-fid.

The weights are He-normal kernels with every BatchNorm tensor moved off the
identity, drawn from numpy seeds (`references.inception_variables`); as a
pytorch-fid state dict they go through `convert_inception`, the path users'
weights take. The reference outputs (pool3 features, logits, torch's
bilinear resize to 299, pytorch-fid's Frechet distance) are goldens made by
pytorch-fid 0.3.0 on torch (tests/golden/inception.npz, `python -m
tests.references`) and, with `pip install -e ".[parity]"`, also computed
live. Reading a .pth file and pytorch-fid's own readers need torch: those
tests run live only and skip without it, saying so.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilct_jax.evaluation import features, fid
from ilct_jax.models import convert_inception, inception
from tests import cluster, references

TOL = 1e-4  # Issue 6: pool3 relative error <= 1e-4 in float32.
SOURCES = ["golden", "live"]


def _expected(source):
  return references.expected(
    source,
    "inception",
    references.inception_reference,
    needs=("torch", "torchvision", "pytorch_fid"),
  )


@pytest.fixture(scope="module")
def converted():
  """The drawn variables, through pytorch-fid's names and the converter."""
  _, variables = references.inception_variables()
  state = references.inception_state_dict(variables)
  converted = convert_inception.convert_state_dict(state)
  return inception.InceptionV3(), converted, state


def _torch():
  mods = references.live_modules("torch", "pytorch_fid.fid_score")
  if mods is None:
    pytest.skip(f"needs torch and pytorch-fid: {references.PARITY_EXTRA}")
  return mods


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  """(max abs error / max |ref|, ||error|| / ||ref||)."""
  err = np.asarray(ours, np.float64) - ref
  return (
    float(np.abs(err).max() / np.abs(ref).max()),
    float(np.linalg.norm(err) / np.linalg.norm(ref)),
  )


@pytest.mark.parametrize("source", SOURCES)
def test_feature_fn_uint8_256_matches_pytorch_fid(converted, source):
  module, variables, _ = converted
  ref = _expected(source)["pool3_uint8_256"]
  images = references.inception_inputs()["uint8_256"]
  ours = np.asarray(features.feature_fn(module, variables)(images))
  max_rel, norm_rel = _rel_err(ours, ref)
  print(f"pool3 256x256 uint8: max rel {max_rel:.2e}, norm rel {norm_rel:.2e}")
  assert ours.shape == (2, 2048) and ref.std() > 1e-2  # Not degenerate.
  assert max_rel <= TOL and norm_rel <= TOL


@pytest.mark.parametrize("source", SOURCES)
def test_module_pool3_and_logits_match_on_nonsquare_downsample(
  converted, source
):
  module, variables, _ = converted
  want = _expected(source)
  images = references.inception_inputs()["float_320x340"]
  out = jax.jit(module.apply)(variables, images.transpose(0, 2, 3, 1))
  for name in ("pool3", "logits"):
    ref = want[f"{name}_320x340"]
    max_rel, norm_rel = _rel_err(out[name], ref)
    print(f"{name} 320x340: max rel {max_rel:.2e}, norm rel {norm_rel:.2e}")
    assert ref.std() > 1e-2 and max_rel <= TOL and norm_rel <= TOL


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("hw", references.RESIZE_SIZES)
def test_resize_matches_interpolate_bilinear(hw, source):
  name = f"resize_{hw[0]}x{hw[1]}"
  ref = _expected(source)[name]
  x = references.inception_inputs()[name]
  ours = inception.resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)))
  s = references.RESIZE_STRIDE
  assert ours.shape == (2, 299, 299, 3)
  np.testing.assert_allclose(ours[:, ::s, ::s], ref, atol=2e-6)


@pytest.mark.parametrize("source", SOURCES)
def test_frechet_distance_matches_pytorch_fid(source):
  want = _expected(source)["frechet"]
  for i, ref in enumerate(want):
    ours = fid.frechet_distance(*references.frechet_stats(i))
    assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref)), (i, ours, ref)


@pytest.mark.parametrize("source", SOURCES)
def test_frechet_fallback_matches_pytorch_fid(source, monkeypatch):
  """Both take the eps path when the first root is not finite (the golden
  was made with pytorch-fid's first sqrtm returning NaN, the same way)."""
  ref = float(_expected(source)["frechet_fallback"])
  real_sqrtm = fid.linalg.sqrtm
  calls = []

  def nan_first(a, **kwargs):
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(fid.linalg, "sqrtm", nan_first)  # scipy.linalg.
  with pytest.warns(UserWarning, match="singular"):
    ours = fid.frechet_distance(*references.fallback_stats(), eps=1e-3)
  assert len(calls) == 2 and abs(ours - ref) <= 1e-6 * abs(ref)


def test_saved_stats_are_read_by_pytorch_fid(tmp_path):
  """Live: pytorch-fid's own reader of precomputed statistics."""
  _, fid_score = _torch()
  feats = np.random.default_rng(4).standard_normal((50, 16))
  mu, sigma = fid.stats_from_features(feats)
  path = str(tmp_path / "stats.npz")
  fid.save_stats(path, mu, sigma)
  ref_mu, ref_sigma = fid_score.compute_statistics_of_path(
    path, None, 1, 16, "cpu"
  )
  np.testing.assert_array_equal(ref_mu, mu)
  np.testing.assert_array_equal(ref_sigma, sigma)


def test_converter_is_strict(converted):
  *_, state = converted
  missing = {k: v for k, v in state.items() if k != "fc.bias"}
  with pytest.raises(ValueError, match=r"missing \['fc.bias'\]"):
    convert_inception.convert_state_dict(missing)
  extra = {**state, "AuxLogits.fc.weight": np.zeros((1008, 768))}
  with pytest.raises(ValueError, match="unexpected.*AuxLogits"):
    convert_inception.convert_state_dict(extra)
  bad = {**state, "fc.weight": np.zeros((1000, 2048))}
  with pytest.raises(ValueError, match="fc.weight has shape"):
    convert_inception.convert_state_dict(bad)


def _pth(state, path, **kwargs):
  torch, _ = _torch()
  tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  torch.save(tensors, path, **kwargs)
  return str(path)


def test_pth_files_and_cli(converted, tmp_path):
  """Live: .pth files (zip and pre-1.6) read back and the CLI writes a
  loadable .npz with the same variables."""
  _, variables, state = converted
  for name, kwargs in (
    ("zip.pth", {}),
    ("legacy.pth", {"_use_new_zipfile_serialization": False}),
  ):
    pth = _pth(state, tmp_path / name, **kwargs)
    out = str(tmp_path / name.replace(".pth", ".npz"))
    cmd = [sys.executable, "-m", "ilct_jax.models.convert_inception"]
    cmd += [f"--pth={pth}", f"--out={out}"]
    env = cluster.env(devices=1)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    _, loaded = convert_inception.load_inception(out)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_hash_in_file_name_is_checked(converted, tmp_path):
  """Live (reading a .pth needs torch)."""
  *_, state = converted
  pth = _pth({"fc.bias": state["fc.bias"]}, tmp_path / "w.pth")
  named = tmp_path / "pt_inception-2015-12-05-00000000.pth"
  os.symlink(pth, named)
  with pytest.raises(ValueError, match="does not start with the 00000000"):
    convert_inception.read_pth(str(named))
