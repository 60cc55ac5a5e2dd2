"""Tests of the Flax VAE, its converter and the codec API (no torch needed)."""

import json
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from safetensors.numpy import save_file

from ilct_jax.evaluation import image_files
from ilct_jax.models import autoencoder, convert_vae, vae_files
from ilct_jax.models import vae as vae_lib
from tests import references

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)


@pytest.fixture(scope="module")
def tiny():
  vae = vae_lib.AutoencoderKL(**TINY)
  return vae, vae_lib.random_params(vae, seed=0)


# Flax params -> diffusers-named tensors in PyTorch layout (test inverse).
_torch_tensors = references.vae_torch_tensors


def _write_diffusers(directory, tensors, **config):
  directory.mkdir(parents=True, exist_ok=True)
  save_file(tensors, str(directory / convert_vae.WEIGHTS_FILE))
  base = {
    "_class_name": "AutoencoderKL",
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "latent_channels": 4,
    "scaling_factor": 0.18215,
    **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()},
  }
  (directory / "config.json").write_text(json.dumps({**base, **config}))
  return directory


def test_shapes_for_tiny_config(tiny):
  vae, params = tiny
  images = jnp.zeros((2, 8, 12, 3))
  posterior = jax.eval_shape(
    lambda x: vae.apply({"params": params}, x, method=vae.encode), images
  )
  assert posterior.mean.shape == posterior.logvar.shape == (2, 4, 6, 4)
  recon = jax.jit(vae.apply)({"params": params}, images)
  assert recon.shape == (2, 8, 12, 3) and bool(jnp.all(jnp.isfinite(recon)))


def test_sd_param_count():
  # Same count as diffusers' AutoencoderKL with the SD config (parity test).
  assert vae_lib.param_count(vae_lib.AutoencoderKL()) == 83_653_863


def test_posterior_statistics():
  mean = jnp.array([0.5, -2.0, 3.0, 0.0])
  logvar = jnp.log(jnp.array([1.0, 0.25, 4.0, 0.01]))
  posterior = vae_lib.DiagonalGaussian(mean, logvar)
  keys = jax.random.split(jax.random.key(1), 20_000)
  draws = jax.vmap(posterior.sample)(keys)
  # Standard errors are std / sqrt(20000) <= 0.015; allow ~4 of them.
  np.testing.assert_allclose(draws.mean(0), mean, atol=0.06)
  np.testing.assert_allclose(draws.std(0), [1.0, 0.5, 2.0, 0.1], rtol=0.03)
  np.testing.assert_array_equal(posterior.mode(), mean)
  # KL(N(0, 1) || N(0, 1)) = 0; KL(N(1, e) || N(0, 1)) = 0.5 * (1 + e - 1 - 1).
  kl = vae_lib.DiagonalGaussian(
    jnp.array([0.0, 1.0]).reshape(2, 1, 1, 1),
    jnp.array([0.0, 1.0]).reshape(2, 1, 1, 1),
  ).kl()
  np.testing.assert_allclose(kl, [0.0, 0.5 * (np.e - 1.0)], rtol=1e-6)


def test_posterior_clips_logvar():
  moments = jnp.array([1.0, 2.0, 100.0, -100.0]).reshape(1, 1, 1, 4)
  posterior = vae_lib.posterior_from_moments(moments)
  np.testing.assert_array_equal(posterior.mean.ravel(), [1.0, 2.0])
  np.testing.assert_array_equal(posterior.logvar.ravel(), [20.0, -30.0])


@pytest.mark.parametrize("legacy_names", [False, True])
def test_converter_round_trip(tiny, tmp_path, legacy_names):
  vae, params = tiny
  tensors = _torch_tensors(params)
  if legacy_names:  # the 2022 sd-vae-ft-* uploads name attention this way
    renames = {"to_q": "query", "to_k": "key", "to_v": "value"}
    renames["to_out.0"] = "proj_attn"
    for new, old in renames.items():
      for k in [k for k in tensors if f".{new}." in k]:
        tensors[k.replace(f".{new}.", f".{old}.")] = tensors.pop(k)
  src = _write_diffusers(tmp_path / "hf", tensors)
  convert_vae.convert(str(src), str(tmp_path / "flax"))
  loaded_vae, loaded = vae_files.load_vae(str(tmp_path / "flax"))
  assert loaded_vae == vae
  flat, want = vae_lib.flatten(loaded), vae_lib.flatten(params)
  assert flat.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(flat[k], want[k], err_msg=k)
  config = json.loads((tmp_path / "flax" / "config.json").read_text())
  assert config["scaling_factor"] == autoencoder.SCALING_FACTOR


def test_converter_infers_architecture_without_config(tmp_path):
  vae = vae_lib.AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1)
  params = vae_lib.random_params(vae, seed=2)
  save_file(_torch_tensors(params), str(tmp_path / "vae.safetensors"))
  convert_vae.convert(str(tmp_path / "vae.safetensors"), str(tmp_path / "out"))
  loaded_vae, loaded = vae_files.load_vae(str(tmp_path / "out"))
  assert loaded_vae == vae
  for k, want in vae_lib.flatten(params).items():
    np.testing.assert_array_equal(vae_lib.flatten(loaded)[k], want, err_msg=k)


def test_converter_lists_missing_unexpected_and_mismatched(tiny, tmp_path):
  tensors = _torch_tensors(tiny[1])
  del tensors["encoder.conv_in.bias"]
  del tensors["decoder.mid_block.attentions.0.to_q.weight"]
  tensors["encoder.extra.weight"] = np.zeros(3, np.float32)
  tensors["quant_conv.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  src = _write_diffusers(tmp_path / "hf", tensors)
  with pytest.raises(convert_vae.ConversionError) as info:
    convert_vae.convert(str(src), str(tmp_path / "out"))
  error = info.value
  assert "\n" not in str(error)
  assert error.missing == [
    "decoder.mid_block.attentions.0.to_q.weight",
    "encoder.conv_in.bias",
  ]
  assert error.unexpected == ["encoder.extra.weight"]
  assert error.mismatched == [("quant_conv.weight", (8, 8, 3, 3), (8, 8, 1, 1))]
  for text in ["2 missing keys", "encoder.conv_in.bias", "1 unexpected keys"]:
    assert text in str(error)
  assert "quant_conv.weight (8, 8, 3, 3) != (8, 8, 1, 1)" in str(error)
  assert not (tmp_path / "out").exists()


def test_converter_cli_prints_every_bad_key(tiny, tmp_path):
  tensors = _torch_tensors(tiny[1])
  dropped = sorted(tensors)[:6]
  for k in dropped:
    del tensors[k]
  src = _write_diffusers(tmp_path / "hf", tensors)
  cmd = [sys.executable, "-m", "ilct_jax.models.convert_vae", "--src", str(src)]
  result = subprocess.run(
    cmd + ["--out", str(tmp_path / "o")], capture_output=True, text=True
  )
  assert result.returncode != 0
  for k in dropped:  # all six, though the one-line summary shows four
    assert f"missing: {k}" in result.stdout
  assert "error: checkpoint does not match AutoencoderKL: 6 missing keys" in (
    result.stderr
  )


@pytest.mark.parametrize(
  "config, message",
  [
    ({"_class_name": "AutoencoderDC"}, "describes class AutoencoderDC, not"),
    ({"scaling_factor": 0.13025}, "scaling_factor 0.13025 and"),
    ({"shift_factor": 0.1159}, "shift_factor 0.1159"),
    ({"up_block_types": ["UpBlock2D"]}, "only UpDecoderBlock2D"),
    ({"use_quant_conv": False}, "use_quant_conv = True"),
  ],
)
def test_other_architectures_are_refused(config, message):
  with pytest.raises(convert_vae.ConversionError, match=message) as info:
    convert_vae.architecture_from_config(config)
  assert "\n" not in str(info.value)


def test_load_vae_missing_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json in VAE"):
    vae_files.load_vae(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
  "shape, message",
  [
    ((1, 64, 60, 3), "image size 64x60 is not a multiple of 8"),
    ((1, 64, 64, 4), "images have 4 channels"),
    ((64, 64, 3), "expected rank 4"),
  ],
)
def test_bad_images(shape, message):
  with pytest.raises(ValueError, match=message) as info:
    vae_lib.check_images(np.zeros(shape), channels=3, factor=8)
  assert "\n" not in str(info.value)
  # The module itself checks too (here with the SD factor 8).
  sd = vae_lib.AutoencoderKL()
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(sd.init, jax.random.key(0), jnp.zeros(shape))


def _mesh():
  return jax.make_mesh((8,), ("data",))


def test_codec_matches_pure_functions_and_shards(tiny):
  vae, params = tiny
  codec = autoencoder.make_codec(vae, params, _mesh())
  images = jax.random.uniform(jax.random.key(3), (8, 8, 8, 3), minval=-1)
  mean, logvar = codec.encode(np.asarray(images))
  assert mean.sharding.spec == P("data") and mean.shape == (8, 4, 4, 4)
  encode = jax.jit(partial(autoencoder.encode_pure, vae))
  want_mean, want_logvar = encode(params, images)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logvar, want_logvar, rtol=1e-5, atol=1e-6)
  # With logvar = -30 the sample is the mean (std 3e-7), times the factor.
  latents = codec.sample_latents(
    jax.random.key(4), mean, jnp.full_like(mean, -30.0)
  )
  np.testing.assert_allclose(latents, mean * 0.18215, atol=1e-6)
  images_out = codec.decode(latents)
  assert images_out.sharding.spec == P("data")
  decode = jax.jit(partial(vae.apply, method=vae.decode))
  direct = decode({"params": params}, np.asarray(latents) / 0.18215)
  np.testing.assert_allclose(images_out, direct, rtol=1e-5, atol=1e-5)


def test_codec_bad_inputs(tiny):
  vae, params = tiny
  codec = autoencoder.make_codec(vae, params, _mesh())
  with pytest.raises(ValueError, match="image batch of 4 is not divisible by"):
    codec.encode(np.zeros((4, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="image size 8x7 is not a multiple of 2"):
    codec.encode(np.zeros((8, 8, 7, 3), np.float32))
  with pytest.raises(ValueError, match="images have 1 channels"):
    codec.encode(np.zeros((8, 8, 8, 1), np.float32))
  with pytest.raises(ValueError, match=r"expected \[B, h, w, 4\]"):
    codec.decode(np.zeros((8, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="lack 'data'"):
    autoencoder.make_codec(vae, params, jax.make_mesh((8,), ("batch",)))


def test_to_uint8_rounds_like_save_image():
  images = jnp.array([-2.0, -1.0, 0.0, 1.0, 3.0, 2 * 100.2 / 255 - 1])
  # (x + 1) / 2 * 255 -> [-127.5, 0, 127.5, 255, 510, 100.2], rounded, clipped.
  np.testing.assert_array_equal(
    image_files.to_uint8(images), [0, 0, 128, 255, 255, 100]
  )
  assert image_files.to_uint8(images).dtype == jnp.uint8
