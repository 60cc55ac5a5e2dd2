"""iLCT baseline on FFHQ 256: the authors' FFHQ baseline recipe.

Read from quandao10/LCT branch `ot` (commit 5e7d492):
`scripts/old/train_lct_ffhq_baseline.sh` trained
`large_dhariwal_unet_huber_no_grad_norm_bs128_groupnorm` on 1 GPU with the
pseudo-Huber loss, iCT weighting and lognormal index sampler, curriculum
10 -> 640, global batch 224, 1050 epochs, 4 residual blocks per level,
GroupNorm blocks and out-norm, no diffusion loss, no OT; its test scripts
(`scripts/old/test_baseline_ffhq*.sh`) sample epoch 1050 with EMA 0.99993,
2-step ts = 0,440,640. Its `--max-grad-norm 100.0` is not applied (the clip
call is commented out in the training script, as for every run here).

What differs from configs/ilct_baseline.py (the CelebA baseline): FFHQ
latents, 4 residual blocks (not 2), curriculum end 640 (not 1280), batch 224,
1050 epochs, EMA 0.99993, ts 0,440,640. The Huber constant is the same
c0 = 0.00054 sqrt(d) (the same code path).

No Table 1 number comes from this run in the paper; it is the baseline the
authors trained for FFHQ. Command:
  python -m ilct_jax.main --config=configs/ilct_baseline_ffhq.py \
    --workdir=runs/ilct_baseline_ffhq
"""

import ml_collections

from configs import ffhq


def get_config() -> ml_collections.ConfigDict:
  """Returns the authors' FFHQ baseline config."""
  config = ffhq.get_config()
  config.ct.loss = "huber"
  config.ct.c_schedule = "constant"  # c = c0 = 0.03456 for 32x32x4.
  config.ct.diffusion_loss = False
  config.ct.end_scales = 640
  config.coupling.method = "none"
  config.coupling.group_size = 0
  config.model.norm = "group"
  config.model.num_blocks = 4
  config.train.batch_size = 224
  config.train.epochs = 1050
  config.sample.ema_decay = 0.99993
  config.sample.grid_scales = 640
  config.sample.ts = (0, 440, 640)
  return config
