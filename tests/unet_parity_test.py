"""Parity of the Flax DhariwalUNet with the authors' network (ALGORITHM 11a).

The authors' `DhariwalUNet` (quandao10/LCT, branch `ot`,
models/network_karras.py) is EDM's network with their norm switch. Two of
the paper's UNets, shrunk: NsLN everywhere (CelebA-HQ, FFHQ) and GroupNorm
everywhere (LSUN Church), with attention at 4x4 (two heads in the NsLN case).
The same weights (numpy seed, every layer non-zero, norms off their
identity) go into both through `references.authors_unet_state`, which the
authors' module loads strictly; the raw network outputs must agree to a
relative error of 1e-5 in float32 (measured: 1.1e-6 on both cases).

The reference outputs are goldens (tests/golden/unet_*.npz). The authors'
code is not a package: the live check runs when ILCT_AUTHORS_REPO names a
checkout of it (and torch is installed) and skips, saying so, otherwise.
"""

import os

import jax
import numpy as np
import pytest

from tests import references

_TOL = 1e-5


def _live(case):
  repo = os.environ.get(references.AUTHORS_ENV)
  if not repo:
    pytest.skip(
      f"the authors' network runs live only where {references.AUTHORS_ENV} "
      "names a checkout of github.com/quandao10/LCT (branch ot)"
    )
  return references.unet_reference(case, repo)


@pytest.mark.parametrize("source", ["golden", "live"])
@pytest.mark.parametrize("case", list(references.UNET_CASES))
def test_unet_matches_the_authors(case, source):
  want = references.expected(
    source, f"unet_{case}", lambda: _live(case), needs=("torch",)
  )["out"]
  x, labels = references.unet_inputs(case)
  module = references.unet_module(case)
  params = references.unet_params(case)
  got = jax.jit(lambda p: module.apply({"params": p}, x, labels, train=False))(
    params
  )
  err = references.rel_err(got, want)
  print(f"unet {case} ({source}): rel err {err:.2e}")
  assert float(np.std(want)) > 0.1 and err <= _TOL


def test_state_dict_names_are_the_authors():
  """Spot checks of the name map the goldens were made with."""
  state = references.authors_unet_state(references.unet_params("nsln"))
  assert state["enc.8x8_conv.weight"].shape == (64, 4, 3, 3)
  assert state["dec.4x4_in0.qkv.weight"].shape == (384, 128, 1, 1)
  assert state["dec.4x4_in0.affine.weight"].shape == (256, 256)
  # NsLN: the authors' LayerNorm over [C, H, W], its weight fixed at ones.
  assert state["enc.4x4_down.norm0.bias"].shape == (64, 8, 8)
  np.testing.assert_array_equal(state["out_norm.weight"], 1.0)
  group = references.authors_unet_state(references.unet_params("group"))
  assert group["out_norm.weight"].shape == (32,)
  assert np.std(group["out_norm.weight"]) > 0.05  # Drawn, not ones.
