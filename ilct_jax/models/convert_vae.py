"""Converts diffusers AutoencoderKL weights into ilct_jax's Flax VAE format.

Usage:
  python -m ilct_jax.models.convert_vae --src PATH --out OUT_DIR
  python -m ilct_jax.models.convert_vae --hub_id stabilityai/sd-vae-ft-ema \
    --out DIR

`--src` is what users have on disk: a diffusers model directory (`config.json`
+ `diffusion_pytorch_model.safetensors`, or a pipeline directory with a `vae/`
subfolder) or a single `.safetensors` file. Tensors are read with the
`safetensors` package (numpy; no torch, no pickle). `--hub_id` is the only
path that touches the network and is never used by tests.

The conversion is strict: every expected parameter must be present with the
right shape and nothing else may be there; otherwise it fails with a one-line
summary (counts and the first few keys of each kind) and the CLI also prints
every offending key. The checks, in order:

* config.json must describe an `AutoencoderKL` with `DownEncoderBlock2D` /
  `UpDecoderBlock2D` blocks, SiLU, quant convs and mid-block attention. A
  DC-AE (`AutoencoderDC`) or any other class is refused by name.
* `scaling_factor` must be the SD VAE's 0.18215 (ALGORITHM.md §10). An
  SDXL VAE has exactly the SD layout, so its config is the only thing that
  tells it apart: its 0.13025 (and SD3/Flux's values) are refused, because
  ilct_jax scales latents by `autoencoder.SCALING_FACTOR` = 0.18215.
  `--allow_other_scaling_factor` converts anyway and records the value in the
  output config.json. A bare `.safetensors` has no config: its architecture is
  read from tensor shapes (32 GroupNorm groups assumed) and the scale cannot be
  checked, so a warning says so.
* Legacy attention names (`query`, `key`, `value`, `proj_attn`, as in the 2022
  sd-vae-ft-* uploads) are renamed to `to_q`, `to_k`, `to_v`, `to_out.0`, as
  diffusers does on load.

Layouts: conv weights [O, I, kh, kw] -> kernels [kh, kw, I, O]; linear weights
[O, I] -> [I, O]; norm `weight` -> `scale`. All values become float32.
"""

import json
import os
import re
from typing import Any, Sequence

import numpy as np
from absl import app, flags, logging
from flax import traverse_util
from safetensors import safe_open

from ilct_jax.models import vae as vae_lib
from ilct_jax.models import vae_files
from ilct_jax.models.autoencoder import SCALING_FACTOR

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
_LEGACY_ATTENTION = {
  "query": "to_q",
  "key": "to_k",
  "value": "to_v",
  "proj_attn": "to_out.0",
}
# Config values (diffusers AutoencoderKL.__init__ names) this port implements.
_REQUIRED = {
  "act_fn": "silu",
  "use_quant_conv": True,
  "use_post_quant_conv": True,
  "mid_block_add_attention": True,
}


def _sd_arch() -> dict[str, Any]:
  """The SD VAE's architecture fields (the `AutoencoderKL` defaults)."""
  sd = vae_lib.AutoencoderKL()
  return {f: getattr(sd, f) for f in vae_lib.ARCH_FIELDS}


class ConversionError(ValueError):
  """The checkpoint does not fit the VAE; the message is one line.

  Attributes:
    missing: expected PyTorch keys absent from the checkpoint.
    unexpected: checkpoint keys the VAE has no place for.
    mismatched: (key, checkpoint shape, expected shape) triples.
  """

  def __init__(
    self,
    message: str,
    missing: Sequence[str] = (),
    unexpected: Sequence[str] = (),
    mismatched: Sequence[tuple[str, tuple, tuple]] = (),
  ):
    super().__init__(message)
    self.missing = list(missing)
    self.unexpected = list(unexpected)
    self.mismatched = list(mismatched)


def torch_name(flax_path: str) -> str:
  """Flax path -> PyTorch key.

  'encoder/down_blocks_0/conv1/kernel' -> 'encoder.down_blocks.0.conv1.weight'.
  """
  *parents, leaf = flax_path.split("/")
  parts = [re.sub(r"^(.+)_(\d+)$", r"\1.\2", p) for p in parents]
  return ".".join(parts + ["bias" if leaf == "bias" else "weight"])


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch layout of a Flax kernel shape."""
  if len(flax_shape) == 4:  # [kh, kw, I, O] -> [O, I, kh, kw]
    return tuple(flax_shape[i] for i in (3, 2, 0, 1))
  return tuple(reversed(flax_shape))  # dense [I, O] -> [O, I]; 1-D unchanged


def to_flax_layout(array: np.ndarray) -> np.ndarray:
  """Inverse of `torch_shape` on values, cast to float32."""
  array = np.asarray(array, np.float32)
  if array.ndim == 4:
    return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
  return np.ascontiguousarray(array.T)


def canonical_keys(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames legacy attention parameters to the current diffusers names."""
  out = {}
  for key, value in tensors.items():
    m = re.match(r"^(.*\.attentions\.\d+)\.(\w+)\.(weight|bias)$", key)
    if m and m.group(2) in _LEGACY_ATTENTION:
      key = f"{m.group(1)}.{_LEGACY_ATTENTION[m.group(2)]}.{m.group(3)}"
    out[key] = value
  return out


def architecture_from_config(
  config: dict[str, Any], allow_other_scaling_factor: bool = False
) -> dict[str, Any]:
  """Validates a diffusers config.json and returns `AutoencoderKL` fields.

  Args:
    config: the parsed diffusers config.json.
    allow_other_scaling_factor: accept a scaling_factor other than 0.18215.

  Returns:
    The architecture fields (`vae_lib.ARCH_FIELDS`) for `AutoencoderKL`.
  """
  cls = config.get("_class_name", "AutoencoderKL")
  if cls != "AutoencoderKL":
    raise ConversionError(
      f"config.json describes class {cls}, not AutoencoderKL (the SD KL-f8"
      " VAE); convert stabilityai/sd-vae-ft-ema or another AutoencoderKL."
    )
  for field, types in (
    ("down_block_types", "DownEncoderBlock2D"),
    ("up_block_types", "UpDecoderBlock2D"),
  ):
    got = set(config.get(field, [types]))
    if got != {types}:
      raise ConversionError(
        f"config.json {field} = {sorted(got)}; this port builds only"
        f" {types} blocks."
      )
  for field, want in _REQUIRED.items():
    if config.get(field, want) != want:
      raise ConversionError(
        f"config.json {field} = {config[field]!r}; this port implements only"
        f" {field} = {want!r}."
      )
  scale = config.get("scaling_factor", SCALING_FACTOR)
  shift = config.get("shift_factor") or 0.0
  if (scale != SCALING_FACTOR or shift) and not allow_other_scaling_factor:
    raise ConversionError(
      f"config.json has scaling_factor {scale} and shift_factor {shift}, not"
      f" the SD VAE's {SCALING_FACTOR} and 0 (an SDXL VAE has 0.13025, SD3 and"
      f" Flux VAEs a shift); ilct_jax scales latents by {SCALING_FACTOR}:"
      " convert an SD VAE (e.g. stabilityai/sd-vae-ft-ema) or pass"
      " --allow_other_scaling_factor."
    )
  arch = {f: config.get(f, v) for f, v in _sd_arch().items()}
  arch["block_out_channels"] = tuple(arch["block_out_channels"])
  if len(config.get("down_block_types", arch["block_out_channels"])) != len(
    arch["block_out_channels"]
  ):
    raise ConversionError(
      "config.json has different numbers of down_block_types and"
      " block_out_channels; it is not a valid AutoencoderKL config."
    )
  return arch


def infer_architecture(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
  """Reads the architecture from tensor shapes (no config.json available).

  Falls back to the SD config when the keys are not an AutoencoderKL's, so
  that the strict key check then reports exactly what differs.
  """
  blocks = {
    int(m.group(1))
    for k in tensors
    if (m := re.match(r"encoder\.down_blocks\.(\d+)\.", k))
  }
  layers = {
    int(m.group(1))
    for k in tensors
    if (m := re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k))
  }
  if not blocks or not layers:
    return _sd_arch()
  try:
    return {
      "in_channels": tensors["encoder.conv_in.weight"].shape[1],
      "out_channels": tensors["decoder.conv_out.weight"].shape[0],
      "block_out_channels": tuple(
        tensors[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]
        for i in range(len(blocks))
      ),
      "layers_per_block": len(layers),
      "latent_channels": tensors["post_quant_conv.weight"].shape[0],
      # Not stored in the weights; every SD-family VAE uses 32.
      "norm_num_groups": 32,
    }
  except KeyError:
    return _sd_arch()


def convert_tensors(
  tensors: dict[str, np.ndarray], vae: vae_lib.AutoencoderKL
) -> dict[str, Any]:
  """Strictly maps diffusers tensors onto `vae`'s params (nested dict).

  Args:
    tensors: diffusers state dict as numpy arrays.
    vae: the Flax module the tensors must fill exactly.

  Returns:
    Nested float32 numpy params for `vae.apply({"params": ...})`.
  """
  tensors = canonical_keys(tensors)
  expected = {
    torch_name(path): (path, torch_shape(tuple(leaf.shape)))
    for path, leaf in vae_lib.flatten(vae_lib.abstract_params(vae)).items()
  }
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  mismatched = [
    (k, tuple(tensors[k].shape), expected[k][1])
    for k in sorted(set(expected) & set(tensors))
    if tuple(tensors[k].shape) != expected[k][1]
  ]
  if missing or unexpected or mismatched:
    hint = ""
    if any(k.startswith("encoder.down.0.block.") for k in tensors):
      hint = " (these are original CompVis/LDM names: use the diffusers layout)"
    raise ConversionError(
      f"checkpoint does not match AutoencoderKL{hint}: {len(missing)} missing"
      f" keys {missing[:4]}, {len(unexpected)} unexpected keys"
      f" {unexpected[:4]}, {len(mismatched)} shape mismatches"
      f" {[f'{k} {a} != {b}' for k, a, b in mismatched[:4]]}.",
      missing,
      unexpected,
      mismatched,
    )
  flat = {path: to_flax_layout(tensors[k]) for k, (path, _) in expected.items()}
  return traverse_util.unflatten_dict(flat, sep="/")


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  with safe_open(path, framework="numpy") as f:
    return {k: f.get_tensor(k) for k in f.keys()}


def read_source(src: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
  """Reads (config.json or None, tensors) from a directory or a file.

  Args:
    src: a diffusers model directory, a pipeline directory with `vae/`, or a
      `.safetensors` file (its directory's config.json is used if present).

  Returns:
    (parsed config.json or None, {name: numpy array}).
  """
  if os.path.isdir(src) and not os.path.isfile(os.path.join(src, WEIGHTS_FILE)):
    if os.path.isdir(os.path.join(src, "vae")):
      src = os.path.join(src, "vae")
  if os.path.isdir(src):
    weights = os.path.join(src, WEIGHTS_FILE)
    if not os.path.isfile(weights):
      found = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
      if len(found) != 1:
        raise FileNotFoundError(
          f"{src!r} holds no {WEIGHTS_FILE} (safetensors files: {found});"
          " pass --src pointing at the .safetensors file to convert"
          " (PyTorch .bin/.ckpt pickles are not read)."
        )
      weights = os.path.join(src, found[0])
  elif os.path.isfile(src) and src.endswith(".safetensors"):
    weights = src
  else:
    raise FileNotFoundError(
      f"--src {src!r} is neither a directory nor a .safetensors file; pass a"
      " diffusers VAE directory (config.json + .safetensors) or a file."
    )
  config_path = os.path.join(os.path.dirname(weights), "config.json")
  config = None
  if os.path.isfile(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return config, _load_safetensors(weights)


def convert(
  src: str, out: str, allow_other_scaling_factor: bool = False
) -> tuple[vae_lib.AutoencoderKL, dict[str, Any]]:
  """Reads `src`, checks and converts it, writes the Flax checkpoint to `out`.

  Args:
    src: see `read_source`.
    out: output directory for `vae_files.load_vae`.
    allow_other_scaling_factor: see the module docstring.

  Returns:
    (module, params) as `vae_files.load_vae(out)` would return them.
  """
  config, tensors = read_source(src)
  if config is None:
    arch = infer_architecture(tensors)
    scale = SCALING_FACTOR
    logging.warning(
      "No config.json beside %s: architecture read from tensor shapes and"
      " scaling_factor assumed to be %s (an SDXL VAE cannot be told apart).",
      src,
      SCALING_FACTOR,
    )
  else:
    arch = architecture_from_config(config, allow_other_scaling_factor)
    scale = config.get("scaling_factor", SCALING_FACTOR)
  vae = vae_lib.AutoencoderKL(**arch)
  params = convert_tensors(tensors, vae)
  extra = {"scaling_factor": scale, "source": os.path.abspath(src)}
  vae_files.save_vae(out, vae, params, extra)
  return vae, params


def _download(hub_id: str) -> str:
  """Fetches config.json + weights of a hub model (explicit option only).

  HF_ENDPOINT picks the hub (a mirror, or the test's local server); a
  failure is one line naming the repository.
  """
  try:
    import huggingface_hub  # Lazy: only this option needs it.
  except ImportError:
    raise SystemExit(
      "error: --hub_id needs huggingface_hub: pip install 'ilct_jax[hub]' "
      "(or download the model yourself and pass --src=DIR)"
    ) from None
  try:
    return huggingface_hub.snapshot_download(
      hub_id, allow_patterns=["config.json", WEIGHTS_FILE]
    )
  except Exception as e:  # noqa: BLE001 (any hub error: one line)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise SystemExit(
      f"error: could not download {hub_id} from the hub "
      f"({type(e).__name__}: {first}); check the name and your network, "
      "or pass --src=DIR"
    ) from None


def main(argv):
  del argv
  f = flags.FLAGS
  if (f.src is None) == (f.hub_id is None) or f.out is None:
    raise app.UsageError("pass --out and exactly one of --src and --hub_id.")
  src = f.src if f.hub_id is None else _download(f.hub_id)
  try:
    vae, _ = convert(src, f.out, f.allow_other_scaling_factor)
  except ConversionError as e:
    for key in e.missing:
      print(f"missing: {key}")
    for key in e.unexpected:
      print(f"unexpected: {key}")
    for key, got, want in e.mismatched:
      print(f"shape mismatch: {key} {got} != {want}")
    raise SystemExit(f"error: {e}") from None
  except FileNotFoundError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"wrote {f.out} ({vae_lib.param_count(vae):,} parameters)")


if __name__ == "__main__":
  flags.DEFINE_string("src", None, "diffusers VAE directory or .safetensors.")
  flags.DEFINE_string("hub_id", None, "Download this hub model, not --src.")
  flags.DEFINE_string("out", None, "Output directory of the Flax checkpoint.")
  flags.DEFINE_bool(
    "allow_other_scaling_factor", False, "Accept scaling_factor != 0.18215."
  )
  app.run(main)
