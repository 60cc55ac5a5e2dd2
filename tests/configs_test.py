"""Paper configs: the numbers ALGORITHM.md §13 fixes, and they build a model."""

import jax
import pytest

from configs import (
  celeba,
  celeba_dit,
  demo,
  ffhq,
  ilct_baseline,
  ilct_baseline_ffhq,
  imagenet256_dit,
  lsun_church,
)
from ilct_jax import config_checks, consistency, train
from ilct_jax import state as state_lib
from ilct_jax.models import unet
from tests import dit_references

# The verified CelebA-HQ run (ALGORITHM.md §11a, §12, §13, §14, §15, §18):
# config field -> the value the authors' run used.
VERIFIED_RUN = {
  "data.image_size": 32,  # 4x32x32 latents of 256x256 images.
  "data.channels": 4,
  "model.name": "dhariwal_unet",
  "model.model_channels": 128,
  "model.channel_mult": (1, 2, 3, 4),
  "model.num_blocks": 4,
  "model.attn_resolutions": (16, 8),
  "model.head_channels": 64,
  "model.dropout": 0.0,
  "model.norm": "nsln",
  "ct.sigma_min": 0.002,
  "ct.sigma_max": 80.0,
  "ct.sigma_data": 0.5,
  "ct.rho": 7.0,
  "ct.p_mean": -1.1,
  "ct.p_std": 2.0,
  "ct.start_scales": 10,
  "ct.end_scales": 640,
  "ct.index_sampler": "lognormal",
  "ct.weighting": "ict",
  "ct.loss": "cauchy",
  "ct.c_schedule": "adaptive",
  "ct.c": 0.0,  # 0 = c0 = 0.00054 * sqrt(4096) = 0.03456.
  "ct.c_mult": 1.0,
  "ct.diffusion_loss": True,
  "ct.diffusion_weight": 5.0,
  "ct.diffusion_threshold": 0.75,
  "coupling.method": "exact",
  "coupling.group_size": 128,  # One GPU paired all 128.
  "optim.name": "radam",
  "optim.lr": 1e-4,
  "optim.b1": 0.9,
  "optim.b2": 0.999,
  "optim.eps": 1e-8,
  "optim.weight_decay": 1e-4,
  "train.batch_size": 128,
  "train.epochs": 1400,
  "sample.ema_decay": 0.99993,
  "sample.grid_scales": 640,
  "sample.ts": (0, 420, 640),
  "eval.num_samples": 50_176,  # ceil(50000 / 256) * 256 files scored.
  "eval.seed": 42,
  "eval.protocol": "paper",
  "eval.inception_size": 299,
  "eval.samplers": ("onestep", "twostep"),
}


def test_celeba_config_is_the_verified_run_field_by_field():
  c = celeba.get_config()
  wrong = {
    path: (c[path.split(".")[0]][path.split(".")[1]], want)
    for path, want in VERIFIED_RUN.items()
    if c[path.split(".")[0]][path.split(".")[1]] != want
  }
  assert not wrong, wrong  # field: (config, published)
  assert 0.99993 in c.ema.decays  # The EMA of the paper's numbers.
  assert c.data.source == "latents" and c.vae.path.endswith("sd-vae-ft-ema")
  config_checks.check_names(c)


def test_celeba_schedule_numbers():
  c = celeba.get_config()
  steps = train.total_steps(c, 27_000)
  assert steps == 294_000  # 210 steps/epoch * 1400 epochs.
  # 7 equal stages of 42,000 steps: N = 11, 21, ..., 641.
  ct = c.ct
  n = lambda k: int(consistency.num_scales(k, steps, ct.start_scales, 640))
  assert [n(42_000 * s) for s in range(7)] == [11, 21, 41, 81, 161, 321, 641]
  assert n(41_999) == 11 and n(293_999) == 641
  assert consistency.c0(4096) == pytest.approx(0.03456, rel=1e-6)
  sig = consistency.karras_grid(641, 641, ct.sigma_min, ct.sigma_max, ct.rho)
  assert float(sig[420]) == pytest.approx(0.5286, abs=1e-4)


# What each other config's number was produced with, read from the authors'
# repository (quandao10/LCT; each config's header names the file and commit).
AUTHORS_RUNS = {
  lsun_church: {
    "model.norm": "group",  # network_karras.py at 1df67b9: GN blocks, out.
    "sample.ema_decay": 0.9999,  # test_lct5.sh: --ema.
    "coupling.group_size": 192,  # 1536 over 8 GPUs, OT per GPU.
    "train.batch_size": 1536,
    "train.num_steps": 273_000,  # (240,000 // 1536) * 1750.
  },
  ilct_baseline: {"sample.ema_decay": 0.9999, "model.norm": "group"},
  ffhq: {"coupling.group_size": 128, "train.batch_size": 128},
  ilct_baseline_ffhq: {
    "ct.loss": "huber",
    "ct.end_scales": 640,
    "model.num_blocks": 4,
    "model.norm": "group",
    "train.batch_size": 224,
    "train.epochs": 1050,
    "sample.ema_decay": 0.99993,
    "sample.ts": (0, 440, 640),
    "coupling.method": "none",
    "ct.diffusion_loss": False,
  },
}


@pytest.mark.parametrize("module", list(AUTHORS_RUNS))
def test_configs_are_the_authors_runs(module):
  c = module.get_config()
  got = {p: c[p.split(".")[0]][p.split(".")[1]] for p in AUTHORS_RUNS[module]}
  assert got == AUTHORS_RUNS[module]
  assert c.sample.ema_decay in c.ema.decays
  config_checks.check_names(c)


def test_lsun_steps_per_stage_are_the_authors():
  c = lsun_church.get_config()
  k = train.total_steps(c, 2 * 126_227)  # Whatever the set holds.
  assert k == 273_000 and k // 7 == 39_000  # 7 stages: N = 11 ... 641.


@pytest.mark.parametrize(
  "module", [celeba, lsun_church, ffhq, ilct_baseline, ilct_baseline_ffhq]
)
def test_paper_configs_build(module):
  c = module.get_config()
  config_checks.check_names(c)
  params = jax.eval_shape(
    lambda k: state_lib._init(c, k),
    jax.random.key(0),  # noqa: SLF001
  ).params
  n = unet.count_params(params)
  if c.model.norm == "nsln":
    assert n == 158_355_972  # ALGORITHM.md §11a: ~158M with NsLN.
  else:
    # GroupNorm: 2 blocks per level (CelebA baseline) or 4 (LSUN, FFHQ
    # baseline), each norm with a scale on top of NsLN's bias.
    assert (n < 151_325_956) == (c.model.num_blocks == 2) and n > 50e6


def test_demo_config_is_pixel_mode_full_recipe():
  c = demo.get_config()
  assert c.data.source == "digits" and c.data.channels == 1
  assert c.ct.loss == "cauchy" and c.model.norm == "nsln"
  config_checks.check_names(c)


# The authors' DiT runs (ALGORITHM.md §20-21; the configs' headers cite the
# scripts): config field -> the value of their flags, and the authors' own
# trainable parameter count of that network (tests/golden/dit_versions.json).
DIT_RUNS = {
  celeba_dit: (
    {
      "model.arch": "dit",
      "model.norm": "nsln",
      "dit.size": "B",
      "dit.patch": 2,
      "dit.mlp": "relu",
      "dit.rope": False,
      "dit.freq_filter": True,
      "model.num_classes": 0,
      "train.epochs": 700,
      "sample.ts": (0, 420, 640),
    },
    "B2_celeba_relu",
  ),
  imagenet256_dit: (
    {
      "model.arch": "dit",
      "model.norm": "rms",
      "dit.size": "B",
      "dit.patch": 2,
      "dit.mlp": "gate_relu",
      "dit.rope": True,
      "dit.freq_filter": True,
      "model.num_classes": 1000,
      "model.label_dropout": 0.1,
      "ct.p_mean": -0.8,
      "ct.p_std": 1.5,
      "ct.start_scales": 8,
      "ct.end_scales": 512,
      "ct.diffusion_threshold": 0.70,
      "coupling.method": "none",
      "train.epochs": 560,
      "sample.ts": (0, 256, 512),
      "sample.cfg_scale": 1.5,
      "sample.cfg_channels": 3,
      "data.labels": "label",
    },
    "B2_imagenet_authors",
  ),
}


@pytest.mark.parametrize("module", list(DIT_RUNS))
def test_dit_configs_are_the_authors_runs(module):
  c = module.get_config()
  fields, count_case = DIT_RUNS[module]

  def get(path):
    group, name = path.split(".")
    return (c.model.dit if group == "dit" else c[group])[name]

  assert {p: get(p) for p in fields} == fields
  config_checks.check_names(c)
  params = jax.eval_shape(
    lambda k: state_lib._init(c, k),
    jax.random.key(0),  # noqa: SLF001
  ).params
  assert unet.count_params(params) == dit_references.golden_counts()[count_case]
