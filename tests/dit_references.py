"""The reference side of the DiT parity test: weights, inputs, goldens.

The authors' DiT is models/network_dit.py of quandao10/LCT, branch
`trans_reproduce` (commit below). It is not a package: the live check runs
where ILCT_AUTHORS_DIT_REPO names a checkout of that branch and timm, einops
and PyWavelets are installed (`pip install -e ".[parity]"`; their file
imports all three). Otherwise the goldens in tests/golden/dit_*.npz are the
reference. Their file calls timm's Attention with a `feat_rope` argument that
no timm release has (their installed copy was patched); the live reference
gives timm's Attention that argument, applied to q and k after their norms
as EVA does (docs/ALGORITHM.md §20): that one detail is our reading.

Regenerate (needs torch, timm, einops, PyWavelets and the checkout):

  python -m tests.dit_references --authors_dit_repo=/path/to/LCT
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ilct_jax.models import convert_dit, dit
from tests import references

AUTHORS_DIT_ENV = "ILCT_AUTHORS_DIT_REPO"
AUTHORS_DIT_COMMIT = "060c3e8"  # quandao10/LCT branch `trans_reproduce`.
CHANNELS = 4
NEEDS = ("torch", "timm", "einops", "pywt")

# Shrunk option sets: the authors' ImageNet flags (rms, gate_relu, rope,
# prev_mlp, 10 classes), their plain LayerNorm DiT (nsln: no affine;
# gelu; unconditional, so one null row), and patch 4.
CASES = {
  "imagenet_flags": dict(
    size=8, patch=2, depth=2, hidden=64, heads=4, norm="rms",
    mlp="gate_relu", rope=True, freq_filter=True, num_classes=10,
  ),
  "plain_nsln": dict(
    size=8, patch=2, depth=2, hidden=64, heads=4, norm="nsln", mlp="gelu",
    rope=False, freq_filter=False, num_classes=0,
  ),
  "patch4": dict(
    size=16, patch=4, depth=1, hidden=96, heads=3, norm="rms",
    mlp="gate_relu", rope=True, freq_filter=True, num_classes=3,
  ),
}  # fmt: skip
# Full sizes whose parameter counts are compared (input 32x32x4, the
# latent of a 256 image): (size, patch, norm, mlp, rope, filter, classes).
COUNT_CASES = {
  "B2_celeba_authors": ("B", 2, "rms", "gate_relu", True, True, 0),
  "B2_imagenet_authors": ("B", 2, "rms", "gate_relu", True, True, 1000),
  "S2_plain": ("S", 2, "nsln", "gelu", False, False, 0),
  "L2_authors": ("L", 2, "rms", "gate_relu", True, True, 1000),
  "XL2_plain": ("XL", 2, "nsln", "gelu", False, False, 1000),
  "B4_authors": ("B", 4, "rms", "gate_relu", True, True, 0),
  "B2_celeba_relu": ("B", 2, "nsln", "relu", False, True, 0),
}


def module(case: str) -> dit.DiT:
  c = CASES[case]
  return dit.DiT(
    out_channels=CHANNELS,
    patch=c["patch"],
    depth=c["depth"],
    hidden=c["hidden"],
    heads=c["heads"],
    mlp=c["mlp"],
    norm=c["norm"],
    rope=c["rope"],
    freq_filter=c["freq_filter"],
    num_classes=c["num_classes"],
  )


def count_module(case: str) -> dit.DiT:
  size, patch, norm, mlp, rope, filt, classes = COUNT_CASES[case]
  depth, hidden, heads = dit.SIZES[size]
  return dit.DiT(
    out_channels=CHANNELS,
    patch=patch,
    depth=depth,
    hidden=hidden,
    heads=heads,
    mlp=mlp,
    norm=norm,
    rope=rope,
    freq_filter=filt,
    num_classes=classes,
  )


def inputs(case: str):
  """x [B, H, W, C], c_noise = 250 ln(sigma) and labels (the null label
  num_classes included)."""
  c = CASES[case]
  rng = np.random.default_rng(1)
  batch = 3
  x = rng.normal(size=(batch, c["size"], c["size"], CHANNELS))
  sigma = np.exp(rng.uniform(np.log(0.002), np.log(80.0), batch))
  labels = np.array([0, max(c["num_classes"] - 1, 0), c["num_classes"]])
  return (
    x.astype(np.float32),
    (250 * np.log(sigma)).astype(np.float32),
    labels.astype(np.int32),
  )


def params(case: str):
  """Kernels ~ N(0, 1/fan_in) (the zero-initialised adaLN and output layers
  too), biases ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.1^2), the label table
  ~ N(0, 1), frequency filters (1, 0) + N(0, 0.1^2); numpy seed 0 over the
  sorted Flax paths."""
  x, n, _ = inputs(case)
  shapes = jax.eval_shape(
    lambda k: module(case).init(k, jnp.asarray(x), jnp.asarray(n), False),
    jax.random.key(0),
  )["params"]
  flat = traverse_util.flatten_dict(shapes, sep="/")
  rng = np.random.default_rng(0)
  out = {}
  for path in sorted(flat):
    shape = flat[path].shape
    if path.endswith("kernel"):
      value = rng.normal(size=shape) / np.sqrt(shape[0])
    elif path.endswith("prev_mlp"):
      value = 0.1 * rng.normal(size=shape)
      value[..., 0] += 1.0
    elif path.endswith("embedding_table"):
      value = rng.normal(size=shape)
    else:
      value = 0.1 * rng.normal(size=shape) + path.endswith("scale")
    out[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(out, sep="/")


def _authors_module(repo: str):
  root = pathlib.Path(repo)
  source = root / "models" / "network_dit.py"
  if not source.is_file():
    raise FileNotFoundError(
      f"{source} not found: {AUTHORS_DIT_ENV} must name a checkout of "
      "github.com/quandao10/LCT, branch trans_reproduce "
      f"({AUTHORS_DIT_COMMIT})"
    )
  sys.path.insert(0, str(root))  # For `repa` and `models.wavelet_layer`.
  spec = importlib.util.spec_from_file_location("lct_network_dit", source)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod
  spec.loader.exec_module(mod)
  mod.Attention = _rope_attention(mod.Attention)
  return mod


def _rope_attention(base):
  """timm's Attention with the `feat_rope` argument the authors' call has."""
  import torch.nn.functional as F

  class RopeAttention(base):
    def forward(self, x, feat_rope=None):
      b, n, c = x.shape
      qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
      q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
      q, k = self.q_norm(q), self.k_norm(k)
      if feat_rope is not None:
        q, k = feat_rope(q), feat_rope(k)
      x = F.scaled_dot_product_attention(q, k, v)
      return self.proj(x.transpose(1, 2).reshape(b, n, c))

  return RopeAttention


def _authors_dit(mod, *, size, patch, depth, hidden, heads, norm, mlp, rope,
                 freq_filter, num_classes, **_):  # fmt: skip
  return mod.DiT(
    input_size=size,
    patch_size=patch,
    in_channels=CHANNELS,
    hidden_size=hidden,
    depth=depth,
    num_heads=heads,
    num_classes=num_classes,
    learn_sigma=False,
    norm_type="rms" if norm == "rms" else "layer",
    linear_act=mlp,
    use_rope=rope,
    freq_type="prev_mlp" if freq_filter else "none",
  )


def reference(case: str, repo: str) -> dict[str, np.ndarray]:
  """The authors' DiT (eval mode) on the case's weights and inputs."""
  import torch

  net = _authors_dit(_authors_module(repo), **CASES[case]).eval()
  state = convert_dit.to_torch(params(case), CASES[case]["patch"])
  tensors = {k: torch.from_numpy(v) for k, v in state.items()}
  fixed = net.state_dict()  # pos_embed and the rotary tables: not weights.
  tensors.update({k: fixed[k] for k in fixed if k not in tensors})
  net.load_state_dict(tensors, strict=True)
  x, n, y = inputs(case)
  with torch.no_grad():
    out, _, _ = net(
      torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
      torch.from_numpy(n),
      torch.from_numpy(y.astype(np.int64)),
    )
  trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
  return {
    "out": out.numpy().transpose(0, 2, 3, 1),
    "trainable_params": np.asarray(trainable),
  }


def authors_counts(repo: str) -> dict[str, int]:
  """Trainable parameters of the authors' full-size DiTs (meta device)."""
  import torch

  mod = _authors_module(repo)
  counts = {}
  for case, (
    size,
    patch,
    norm,
    mlp,
    rope,
    filt,
    classes,
  ) in COUNT_CASES.items():
    depth, hidden, heads = dit.SIZES[size]
    with torch.device("meta"):
      net = _authors_dit(
        mod, size=32, patch=patch, depth=depth, hidden=hidden, heads=heads,
        norm=norm, mlp=mlp, rope=rope, freq_filter=filt, num_classes=classes,
      )  # fmt: skip
    counts[case] = sum(p.numel() for p in net.parameters() if p.requires_grad)
  return counts


def regenerate(repo: str, out_dir: pathlib.Path = references.GOLDEN_DIR):
  for case in CASES:
    arrays = reference(case, repo)
    np.savez(out_dir / f"dit_{case}.npz", **arrays)
    print(case, {k: v.shape for k, v in arrays.items()})
  info = {p: importlib.metadata.version(p) for p in ("torch", "timm", "einops")}
  info["PyWavelets"] = importlib.metadata.version("PyWavelets")
  info["authors_repo"] = (
    f"quandao10/LCT@{AUTHORS_DIT_COMMIT} (branch trans_reproduce)"
  )
  info["generated"] = datetime.date.today().isoformat()
  info["trainable_params"] = authors_counts(repo)
  path = out_dir / "dit_versions.json"
  path.write_text(json.dumps(info, indent=1) + "\n")
  print(info)


def golden_counts() -> dict[str, int]:
  path = references.GOLDEN_DIR / "dit_versions.json"
  return json.loads(path.read_text())["trainable_params"]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--authors_dit_repo",
    default=os.environ.get(AUTHORS_DIT_ENV),
    required=AUTHORS_DIT_ENV not in os.environ,
    help="a checkout of github.com/quandao10/LCT, branch trans_reproduce",
  )
  args = parser.parse_args()
  sys.modules.setdefault("triton", None)  # As tests/conftest.py.
  regenerate(args.authors_dit_repo)


if __name__ == "__main__":
  main()
