"""Parity of the Flax VAE with PyTorch diffusers' AutoencoderKL.

Random diffusers weights go through `save_pretrained` (safetensors) and
`convert_vae`; encoder mean/logvar and decoder outputs must agree to a
relative error (max |flax - torch| / max |torch|) of at most 1e-4 in float32.
Runs live against torch + diffusers (the `[test]` extra installs them).
"""

import shutil

import numpy as np
import pytest

torch = pytest.importorskip(
  "torch", reason="parity needs PyTorch: pip install -e .[test]"
)
diffusers = pytest.importorskip(
  "diffusers", reason="parity needs diffusers: pip install -e .[test]"
)

from ilct_jax.models import autoencoder, convert_vae  # noqa: E402
from ilct_jax.models import vae as vae_lib  # noqa: E402

_TOL = 1e-4


def _torch_vae(widths, layers, groups, seed=0):
  """A diffusers AutoencoderKL with random weights, norms moved off (1, 0)."""
  torch.manual_seed(seed)
  n = len(widths)
  model = diffusers.AutoencoderKL(
    block_out_channels=widths,
    layers_per_block=layers,
    norm_num_groups=groups,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * n,
    up_block_types=("UpDecoderBlock2D",) * n,
  )
  # Default init leaves GroupNorm at scale 1 / bias 0, which would hide a
  # dropped or swapped norm mapping: perturb every 1-D parameter.
  with torch.no_grad():
    for p in model.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(x):
  return x.detach().numpy().transpose(0, 2, 3, 1)


def _parity(tmp_path, widths, layers, groups, batch, size):
  model = _torch_vae(widths, layers, groups)
  model.save_pretrained(tmp_path / "hf", safe_serialization=True)
  convert_vae.convert(str(tmp_path / "hf"), str(tmp_path / "flax"))
  vae, params = vae_lib.load_vae(str(tmp_path / "flax"))

  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  f = size // 2 ** (len(widths) - 1)
  z = rng.normal(size=(batch, f, f, 4)).astype(np.float32)
  with torch.no_grad():
    posterior = model.encode(_nchw(images)).latent_dist
    want = {
      "mean": _nhwc(posterior.mean),
      "logvar": _nhwc(posterior.logvar),
      "decode": _nhwc(model.decode(_nchw(z)).sample),
    }
  mean, logvar = autoencoder.encode_pure(vae, params, images)
  got = {
    "mean": mean,
    "logvar": logvar,
    "decode": autoencoder.decode_pure(
      vae, params, z * autoencoder.SCALING_FACTOR
    ),
  }
  errors = {k: _rel_err(got[k], want[k]) for k in want}
  print(f"parity widths={widths} size={size}: {errors}")
  return errors


def test_tiny_config_matches_diffusers(tmp_path):
  errors = _parity(tmp_path, (32, 64, 64), 1, 8, batch=2, size=16)
  assert max(errors.values()) <= _TOL, errors


def test_sd_config_matches_diffusers(tmp_path):
  errors = _parity(tmp_path, (128, 256, 512, 512), 2, 32, batch=1, size=64)
  assert max(errors.values()) <= _TOL, errors


def test_converted_param_count_is_sd(tmp_path):
  """The diffusers SD config and the Flax default have the same 83.65M."""
  model = diffusers.AutoencoderKL(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
  )
  n_torch = sum(p.numel() for p in model.parameters())
  assert n_torch == vae_lib.param_count(vae_lib.AutoencoderKL()) == 83_653_863


def _tiny_dc_ae():
  return diffusers.AutoencoderDC(
    latent_channels=4,
    attention_head_dim=8,
    encoder_block_types="ResBlock",
    decoder_block_types="ResBlock",
    encoder_block_out_channels=(16, 32),
    decoder_block_out_channels=(16, 32),
    encoder_layers_per_block=(1, 1),
    decoder_layers_per_block=(1, 1),
    encoder_qkv_multiscales=((), ()),
    decoder_qkv_multiscales=((), ()),
  )


def test_dc_ae_checkpoint_is_refused(tmp_path):
  _tiny_dc_ae().save_pretrained(tmp_path / "dcae", safe_serialization=True)
  with pytest.raises(
    convert_vae.ConversionError, match="class AutoencoderDC, not"
  ):
    convert_vae.convert(str(tmp_path / "dcae"), str(tmp_path / "out"))
  # Without its config.json only the keys can tell: a one-line key report.
  bare = tmp_path / "dcae.safetensors"
  shutil.copy(tmp_path / "dcae" / convert_vae.WEIGHTS_FILE, bare)
  with pytest.raises(convert_vae.ConversionError) as info:
    convert_vae.convert(str(bare), str(tmp_path / "out"))
  message = str(info.value)
  assert "\n" not in message
  # A few names (encoder.conv_in, decoder.conv_out) exist in both designs.
  assert len(info.value.missing) > 200 and info.value.unexpected
  assert f"{len(info.value.missing)} missing keys" in message
  assert f"{len(info.value.unexpected)} unexpected keys" in message
  print(message)


def test_sdxl_config_is_refused(tmp_path):
  model = _torch_vae((32, 64), 1, 8)
  model.register_to_config(scaling_factor=0.13025)
  model.save_pretrained(tmp_path / "sdxl", safe_serialization=True)
  with pytest.raises(
    convert_vae.ConversionError, match="scaling_factor 0.13025 and shift"
  ):
    convert_vae.convert(str(tmp_path / "sdxl"), str(tmp_path / "out"))
  convert_vae.convert(
    str(tmp_path / "sdxl"),
    str(tmp_path / "out"),
    allow_other_scaling_factor=True,
  )
  loaded_vae, _ = vae_lib.load_vae(str(tmp_path / "out"))
  assert loaded_vae.block_out_channels == (32, 64)
