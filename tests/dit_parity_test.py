"""Parity of the Flax DiT with the authors' (docs/ALGORITHM.md §20).

Three shrunk option sets (tests/dit_references.py: the authors' ImageNet
flags with 10 classes, their plain LayerNorm DiT, patch 4) get the same
random weights in both networks through the strict converter
(`convert_dit.to_torch` for theirs, which loads them with strict=True); the
outputs must agree to a relative error of 1e-5 in float32. The trainable
parameter counts of full-size option sets (DiT-S/B/L/XL, patch 2 and 4, with
and without classes) must equal the authors' own count.
"""

import functools
import os

import jax
import numpy as np
import pytest

from ilct_jax.models import convert_dit, unet
from tests import dit_references as refs
from tests import references

_TOL = 1e-5


def _live(case):
  repo = os.environ.get(refs.AUTHORS_DIT_ENV)
  if not repo:
    pytest.skip(
      f"the authors' DiT runs live only where {refs.AUTHORS_DIT_ENV} names "
      "a checkout of github.com/quandao10/LCT (branch trans_reproduce)"
    )
  return refs.reference(case, repo)


@pytest.mark.parametrize("source", ["golden", "live"])
@pytest.mark.parametrize("case", list(refs.CASES))
def test_dit_matches_the_authors(case, source):
  want = references.expected(
    source, f"dit_{case}", lambda: _live(case), needs=refs.NEEDS
  )
  x, n, y = refs.inputs(case)
  module = refs.module(case)
  params = refs.params(case)
  got = jax.jit(
    lambda p: module.apply({"params": p}, x, n, train=False, labels=y)
  )(params)
  err = references.rel_err(got, want["out"])
  print(f"dit {case} ({source}): rel err {err:.2e}")
  assert float(np.std(want["out"])) > 0.1 and err <= _TOL
  assert unet.count_params(params) == int(want["trainable_params"])


@pytest.mark.parametrize("case", list(refs.COUNT_CASES))
def test_parameter_counts_are_the_authors(case):
  module = refs.count_module(case)
  x = jax.ShapeDtypeStruct((1, 32, 32, refs.CHANNELS), np.float32)
  n = jax.ShapeDtypeStruct((1,), np.float32)
  shapes = jax.eval_shape(
    functools.partial(module.init, train=False), jax.random.key(0), x, n
  )
  ours = unet.count_params(shapes["params"])
  print(f"{case}: {ours:,} trainable parameters")
  assert ours == refs.golden_counts()[case]


def test_the_converter_is_strict_and_inverts():
  case = "imagenet_flags"
  module, params = refs.module(case), refs.params(case)
  state = convert_dit.to_torch(params, patch=2)
  assert state["x_embedder.proj.weight"].shape == (64, 4, 2, 2)
  assert state["blocks.1.attn.q_norm.weight"].shape == (16,)
  assert state["blocks.0.prev_mlp"].shape == (64, 4, 3, 2)
  back = convert_dit.from_torch(state, module, image_size=8)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  with pytest.raises(ValueError, match="lacks 1 DiT parameters"):
    convert_dit.from_torch(
      {k: v for k, v in state.items() if k != "blocks.0.attn.qkv.bias"},
      module,
      8,
    )
  with pytest.raises(ValueError, match="register"):
    convert_dit.from_torch({**state, "register_tokens": np.zeros(3)}, module, 8)
  bad = dict(state, **{"final_layer.linear.weight": np.zeros((4, 64))})
  with pytest.raises(ValueError, match=r"expects \(64, 16\)"):
    convert_dit.from_torch(bad, module, 8)
  # The fixed sin-cos table of another grid (image 16 with patch 2).
  with pytest.raises(ValueError, match="pos_embed differs"):
    convert_dit.from_torch(
      {**state, "pos_embed": np.zeros((1, 64, 64))}, module, 8
    )
