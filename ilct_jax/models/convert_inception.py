"""Converts pytorch-fid's Inception weights to a Flax checkpoint, and loads it.

Users download pytorch-fid's FID weights themselves (the release asset
`pt_inception-2015-12-05-6726825d.pth` of github.com/mseitzer/pytorch-fid);
nothing here touches the network. Conversion, once:

  python -m ilct_jax.models.convert_inception \
    --pth=pt_inception-2015-12-05-6726825d.pth --out=inception_fid.npz

The `.pth` is read with `torch.load(weights_only=True)`, which unpickles only
tensors and containers and never runs pickled code (so conversion needs
PyTorch; using the result does not). Every key of the state dict must map to
exactly one Flax variable and vice versa (BatchNorm's `num_batches_tracked`
counters are ignored: they do not affect inference), or conversion fails.

Checkpoint format: one uncompressed `.npz` whose entries are the float32
leaves of the Flax variables dict, named by their "/"-joined paths, e.g.
`params/Mixed_5b/branch1x1/conv/kernel` or `batch_stats/fc/...`; it is read
with `allow_pickle=False`. Layout changes: conv weights [O, I, kh, kw] ->
[kh, kw, I, O], the linear weight [O, I] -> [I, O]; BatchNorm's weight/bias
become scale/bias and running_mean/var the `batch_stats` mean/var.
"""

import functools
import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ilct_jax import storage
from ilct_jax.models import inception

PyTree = Any

# torch hub convention: the name ends in the first hex digits of the sha256.
_HASHED_NAME = re.compile(r"-([0-9a-f]{6,64})\.pth$")
_IGNORED_SUFFIX = ".num_batches_tracked"


def _torch_name(flax_path: tuple[str, ...]) -> str:
  """Maps a Flax variable path to the torchvision state-dict key."""
  collection, *modules, leaf = flax_path
  if collection == "batch_stats":
    suffix = {"mean": "running_mean", "var": "running_var"}[leaf]
  elif modules[-1] == "bn":
    suffix = {"scale": "weight", "bias": "bias"}[leaf]
  else:
    suffix = {"kernel": "weight", "bias": "bias"}[leaf]
  return ".".join([*modules, suffix])


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # Conv2d [O, I, kh, kw] -> [kh, kw, I, O].
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # Linear [O, I] -> [I, O].
    return value.T
  return value


@functools.lru_cache
def _flat_shapes(num_classes: int) -> dict[tuple[str, ...], Any]:
  """Variable path -> shape; `num_classes` is the only field they depend on."""
  shapes = inception.variable_shapes(
    inception.InceptionV3(num_classes=num_classes)
  )
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def _unflatten(flat: Mapping[tuple[str, ...], np.ndarray]) -> PyTree:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _fail_on_mismatch(missing: list[str], unexpected: list[str]) -> None:
  if missing or unexpected:
    raise ValueError(
      f"Inception state dict does not match the FID InceptionV3: missing "
      f"{sorted(missing)[:5]} ({len(missing)} in all), unexpected "
      f"{sorted(unexpected)[:5]} ({len(unexpected)} in all); pass pytorch-fid's"
      f" pt_inception-2015-12-05-*.pth (FID_WEIGHTS_URL)."
    )


def convert_state_dict(state_dict: Mapping[str, Any]) -> PyTree:
  """Strictly converts a pytorch-fid Inception state dict to Flax variables.

  Args:
    state_dict: torchvision-named tensors or arrays (`Mixed_5b.branch1x1.conv
      .weight`, ..., `fc.weight`), as in pytorch-fid's weight file.

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 numpy arrays for
    `inception.InceptionV3().apply`.

  Raises:
    ValueError: on a missing, unexpected or wrongly shaped entry.
  """
  state = {
    k: np.asarray(v, np.float32)
    for k, v in state_dict.items()
    if not k.endswith(_IGNORED_SUFFIX)
  }
  expected = _flat_shapes(inception.NUM_CLASSES)
  names = {path: _torch_name(path) for path in expected}
  missing = [n for n in names.values() if n not in state]
  unexpected = sorted(set(state) - set(names.values()))
  _fail_on_mismatch(missing, unexpected)
  flat = {}
  for path, shape in expected.items():
    value = _to_flax_layout(state[names[path]])
    if value.shape != shape:
      raise ValueError(
        f"{names[path]} has shape {value.shape} after transposition, the "
        f"model needs {shape}; the file is not pytorch-fid's FID Inception."
      )
    flat[path] = np.ascontiguousarray(value)
  return _unflatten(flat)


def _check_hash(path: str) -> None:
  """Verifies the sha256 prefix in a torch-hub style file name, if any."""
  match = _HASHED_NAME.search(os.path.basename(path))
  if not match:
    return
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  if not digest.hexdigest().startswith(match.group(1)):
    raise ValueError(
      f"{path}: sha256 {digest.hexdigest()[:12]}... does not start with the "
      f"{match.group(1)} in its name; the download is corrupt, fetch it again."
    )


def read_pth(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict without executing pickled code.

  Args:
    path: local `.pth` file.

  Returns:
    Key -> float32 numpy array.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"No Inception weight file at {path!r}; download pytorch-fid's "
      "pt_inception-2015-12-05-6726825d.pth and pass its local path."
    )
  try:
    import torch  # Lazy: only conversion needs PyTorch.
  except ImportError as e:
    raise ImportError(
      "Reading a .pth needs PyTorch: pip install torch (the CPU build is "
      "enough); the converted .npz is then used without it."
    ) from e
  _check_hash(path)
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(
      f"{path} holds a {type(state).__name__}, not a state dict; pass "
      "pytorch-fid's weight file (a plain state dict)."
    )
  return {k: v.detach().float().numpy() for k, v in state.items()}


def save_variables(path: str, variables: PyTree) -> None:
  """Writes Flax variables as an `.npz` of "/"-joined paths (see module doc)."""
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  arrays = {
    "/".join(k.key for k in p): np.asarray(v, np.float32) for p, v in flat
  }
  storage.save_npz(path, **arrays)


def load_inception(
  path: str, **module_kwargs: Any
) -> tuple[inception.InceptionV3, PyTree]:
  """Loads a converted checkpoint.

  Args:
    path: `.npz` (local or gs://) written by this module's converter.
    **module_kwargs: forwarded to `inception.InceptionV3` (e.g. precision).

  Returns:
    (module, variables), to be called as `module.apply(variables, images)`.
  """
  fix = (
    "run python -m ilct_jax.models.convert_inception "
    f"--pth=pt_inception-...pth --out={path}"
  )
  module = inception.InceptionV3(**module_kwargs)
  expected = _flat_shapes(module.num_classes)
  data = storage.load_npz(path, "converted Inception checkpoint", fix)
  stored = {tuple(k.split("/")): v for k, v in data.items()}
  missing = ["/".join(p) for p in expected if p not in stored]
  unexpected = ["/".join(p) for p in stored if p not in expected]
  _fail_on_mismatch(missing, unexpected)
  for p, shape in expected.items():
    if stored[p].shape != shape:
      raise ValueError(
        f"{path}: {'/'.join(p)} has shape {stored[p].shape}, expected "
        f"{shape}; re-run ilct_jax.models.convert_inception on the weight file."
      )
  return module, _unflatten(stored)


def convert(pth_path: str, out_path: str) -> PyTree:
  """Reads `pth_path`, converts strictly and writes `out_path`."""
  variables = convert_state_dict(read_pth(pth_path))
  save_variables(out_path, variables)
  return variables


def main(argv: list[str]) -> None:
  """CLI entry point (flags defined only when run as a script)."""
  del argv
  from absl import flags

  convert(flags.FLAGS.pth, flags.FLAGS.out)
  print(f"Wrote {flags.FLAGS.out}")


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("pth", None, "pytorch-fid pt_inception-*.pth file.")
  flags.DEFINE_string("out", None, "Output .npz (Flax variables).")
  flags.mark_flags_as_required(["pth", "out"])
  app.run(main)
