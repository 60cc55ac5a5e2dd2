"""The authors' DiT weights (a torch state_dict) <-> Flax `dit.DiT` params.

Strict both ways: every tensor of the state_dict must land on a parameter of
the configured network with the same shape, every parameter must be filled,
and the fixed sin-cos `pos_embed` (a frozen nn.Parameter in their file) must
equal `dit.sincos_positions`; any mismatch names the tensor and what the
network expected, so a checkpoint of another size or option set fails at
once. Names: quandao10/LCT branch `trans_reproduce`, models/network_dit.py
(docs/ALGORITHM.md §20). Their training checkpoints hold 'model', 'ema'
and 'target' state_dicts: pass the one you want, as numpy arrays.
"""

import functools
import re
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from ilct_jax.models import dit

PyTree = Any

# (torch name pattern, flax path template); \1 is the block index.
_RULES = (
  (r"x_embedder\.proj\.(weight|bias)", "x_embedder_proj"),
  (r"t_embedder\.mlp\.(0|2)\.(weight|bias)", "t_embedder_mlp_{0}"),
  (r"y_embedder\.embedding_table\.weight", "y_embedder_embedding_table"),
  (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)",
   "blocks_{0}/adaLN_modulation_1"),
  (r"blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", "blocks_{0}/{1}"),
  (r"blocks\.(\d+)\.attn\.(qkv|proj|q_norm|k_norm)\.(weight|bias)",
   "blocks_{0}/attn/{1}"),
  (r"blocks\.(\d+)\.mlp\.(fc1|fc2|w12|w3)\.(weight|bias)",
   "blocks_{0}/mlp/{1}"),
  (r"blocks\.(\d+)\.prev_mlp", "blocks_{0}/prev_mlp"),
  (r"final_layer\.norm_final\.(weight|bias)", "final_norm"),
  (r"final_layer\.linear\.(weight|bias)", "final_linear"),
  (r"final_layer\.adaLN_modulation\.1\.(weight|bias)",
   "final_adaLN_modulation_1"),
)  # fmt: skip
_NORMS = ("norm1", "norm2", "q_norm", "k_norm", "final_norm")


def _flax_path(name: str) -> str:
  """The Flax path of one torch tensor name (leaf included)."""
  for pattern, template in _RULES:
    m = re.fullmatch(pattern, name)
    if not m:
      continue
    groups = m.groups()
    module = template.format(*groups)
    if name.endswith(("y_embedder.embedding_table.weight", "prev_mlp")):
      return module
    leaf = groups[-1]
    is_norm = module.rsplit("/", 1)[-1] in _NORMS
    if leaf == "weight":
      leaf = "scale" if is_norm else "kernel"
    return f"{module}/{leaf}"
  raise ValueError(
    f"DiT weight {name!r} has no place in ilct_jax's DiT (registers, REPA "
    "projectors, the wavelet/attention filters and cond mixing are not "
    "implemented); convert a checkpoint trained without them"
  )


def _to_flax(path: str, value: np.ndarray, patch: int) -> np.ndarray:
  if path == "x_embedder_proj/kernel":  # Conv [D, C, p, q] -> [p*q*C, D].
    return value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
  if path.endswith("/kernel"):
    return value.T
  return value


def _to_torch(path: str, value: np.ndarray, patch: int) -> np.ndarray:
  if path == "x_embedder_proj/kernel":
    d = value.shape[1]
    c = value.shape[0] // (patch * patch)
    return value.reshape(patch, patch, c, d).transpose(3, 2, 0, 1)
  if path.endswith("/kernel"):
    return value.T
  return value


def _expected(model: dit.DiT, image_size: int) -> dict[str, Any]:
  x = jax.ShapeDtypeStruct((1, image_size, image_size, model.out_channels),
                           np.float32)  # fmt: skip
  n = jax.ShapeDtypeStruct((1,), np.float32)
  shapes = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), x, n
  )["params"]
  return traverse_util.flatten_dict(shapes, sep="/")


def from_torch(
  state: dict[str, np.ndarray], model: dit.DiT, image_size: int
) -> PyTree:
  """The authors' state_dict (numpy arrays) -> params of `model`, strictly."""
  want = _expected(model, image_size)
  out = {}
  for name, value in state.items():
    value = np.asarray(value, np.float32)
    if name == "pos_embed":
      grid = image_size // model.patch
      table = dit.sincos_positions(model.hidden, grid)
      if (
        value.size != table.size
        or np.max(np.abs(value.reshape(table.shape) - table)) > 1e-6
      ):
        raise ValueError(
          "pos_embed differs from the 2-D sin-cos table of a "
          f"{grid}x{grid} grid of width {model.hidden}: the checkpoint "
          "was made for another image size, patch or width"
        )
      continue
    if name.startswith("feat_rope."):  # The rotary tables, buffers.
      grid = image_size // model.patch
      cos, sin = dit.rope_tables(model.hidden // model.heads, grid)
      table = cos if name.endswith("cos") else sin
      if (
        not model.rope
        or value.shape != table.shape
        or np.max(np.abs(value - table)) > 1e-5
      ):
        raise ValueError(
          f"{name} does not match this network's rotary table (model.dit."
          f"rope={model.rope}, heads {model.heads}, a {grid}x{grid} grid)"
        )
      continue
    path = _flax_path(name)
    if path not in want:
      raise ValueError(
        f"DiT weight {name!r} -> {path}: the configured network has no such "
        "parameter (check model.norm, model.dit.mlp, rope/freq_filter and "
        "model.num_classes against the checkpoint's run)"
      )
    value = _to_flax(path, value, model.patch)
    if tuple(value.shape) != tuple(want[path].shape):
      raise ValueError(
        f"DiT weight {name!r}: shape {value.shape} in Flax layout, the "
        f"configured network expects {want[path].shape} at {path} (size, "
        "patch, classes or image size differ)"
      )
    out[path] = value
  missing = sorted(set(want) - set(out))
  if missing:
    raise ValueError(
      f"the state_dict lacks {len(missing)} DiT parameters, first "
      f"{missing[:3]}: it was trained with other options"
    )
  return traverse_util.unflatten_dict(out, sep="/")


def to_torch(params: PyTree, patch: int) -> dict[str, np.ndarray]:
  """Flax DiT params -> the authors' state_dict names and layouts (without
  pos_embed, which their network rebuilds; the inverse of `from_torch`)."""
  inverse = {}
  for path, value in traverse_util.flatten_dict(params, sep="/").items():
    value = _to_torch(path, np.asarray(value, np.float32), patch)
    inverse[_torch_name(path)] = np.ascontiguousarray(value)
  return inverse


def _torch_name(path: str) -> str:
  parts = path.split("/")
  leaf = parts[-1]
  if leaf in ("kernel", "scale"):
    leaf = "weight"
  head = parts[0]
  fixed = {
    "x_embedder_proj": "x_embedder.proj",
    "t_embedder_mlp_0": "t_embedder.mlp.0",
    "t_embedder_mlp_2": "t_embedder.mlp.2",
    "final_norm": "final_layer.norm_final",
    "final_linear": "final_layer.linear",
    "final_adaLN_modulation_1": "final_layer.adaLN_modulation.1",
  }
  if head == "y_embedder_embedding_table":
    return "y_embedder.embedding_table.weight"
  if head in fixed:
    return f"{fixed[head]}.{leaf}"
  block = "blocks." + head.split("_")[1]
  if parts[1] == "prev_mlp":
    return f"{block}.prev_mlp"
  inner = ".".join(parts[1:-1]).replace(
    "adaLN_modulation_1", "adaLN_modulation.1"
  )
  return f"{block}.{inner}.{leaf}"
