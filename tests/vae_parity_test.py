"""Parity of the Flax VAE and its converter with diffusers' AutoencoderKL.

Weights drawn from a numpy seed (`vae.random_params`) are written as a
diffusers checkpoint (safetensors + config.json), converted with
`convert_vae` and loaded; the posterior mean / logvar and the decoded images
must match diffusers' own outputs on the same weights to a relative error
(max |flax - ref| / max |ref|) of at most 1e-4 in float32. The reference
outputs are goldens (tests/golden/vae_*.npz, made by diffusers with
`python -m tests.references`) and, when diffusers and torch are installed
(`pip install -e ".[parity]"`), also computed live.
"""

import json
import shutil

import numpy as np
import pytest

from ilct_jax.models import autoencoder, convert_vae, vae_files
from ilct_jax.models import vae as vae_lib
from tests import references

_TOL = 1e-4


def _write_checkpoint(directory, case: str):
  directory.mkdir(parents=True)
  from safetensors.numpy import save_file

  save_file(
    references.vae_weights(case), str(directory / convert_vae.WEIGHTS_FILE)
  )
  config = {
    "_class_name": "AutoencoderKL",
    "scaling_factor": 0.18215,
    **references.vae_diffusers_config(case),
  }
  (directory / "config.json").write_text(json.dumps(config))


def _diffusers():
  diffusers = references.live_modules("torch", "diffusers")
  if diffusers is None:
    pytest.skip(f"needs diffusers and torch: {references.PARITY_EXTRA}")
  return diffusers


@pytest.mark.parametrize("source", ["golden", "live"])
@pytest.mark.parametrize("case", list(references.VAE_CASES))
def test_converted_vae_matches_diffusers(tmp_path, case, source):
  want = references.expected(
    source,
    f"vae_{case}",
    lambda: references.vae_reference(case),
    needs=("torch", "diffusers"),
  )
  _write_checkpoint(tmp_path / "hf", case)
  convert_vae.convert(str(tmp_path / "hf"), str(tmp_path / "flax"))
  vae, params = vae_files.load_vae(str(tmp_path / "flax"))
  images, z = references.vae_inputs(case)
  mean, logvar = autoencoder.encode_pure(vae, params, images)
  got = {
    "mean": mean,
    "logvar": logvar,
    "decode": autoencoder.decode_pure(
      vae, params, z * autoencoder.SCALING_FACTOR
    ),
  }
  errors = {k: references.rel_err(got[k], want[k]) for k in want}
  print(f"parity {case} ({source}): {errors}")
  assert min(float(np.std(want[k])) for k in want) > 1e-2  # Not degenerate.
  assert max(errors.values()) <= _TOL, errors


def test_param_count_is_sd():
  """The Flax default has diffusers' SD count (counted live, recorded in
  tests/references.py when the goldens were made)."""
  assert vae_lib.param_count(vae_lib.AutoencoderKL()) == (
    references.SD_VAE_PARAMS
  )


def test_diffusers_sd_param_count_is_recorded():
  _, diffusers = _diffusers()
  model = diffusers.AutoencoderKL(**references.vae_diffusers_config("sd"))
  assert sum(p.numel() for p in model.parameters()) == references.SD_VAE_PARAMS


def _tiny_dc_ae():
  _, diffusers = _diffusers()
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
  """Live: the DC-AE checkpoint is diffusers' own (nothing to commit)."""
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
  _write_checkpoint(tmp_path / "sdxl", "tiny")
  config_path = tmp_path / "sdxl" / "config.json"
  config = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**config, "scaling_factor": 0.13025}))
  with pytest.raises(
    convert_vae.ConversionError, match="scaling_factor 0.13025 and shift"
  ):
    convert_vae.convert(str(tmp_path / "sdxl"), str(tmp_path / "out"))
  convert_vae.convert(
    str(tmp_path / "sdxl"),
    str(tmp_path / "out"),
    allow_other_scaling_factor=True,
  )
  loaded_vae, _ = vae_files.load_vae(str(tmp_path / "out"))
  assert loaded_vae.block_out_channels == (32, 64, 64)
