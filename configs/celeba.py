"""CelebA-HQ 256 (latents 32x32x4): the paper's main row (ALGORITHM.md §13).

Data (docs/DATA.md has the details):
  1. Put the CelebA-HQ images in a folder; the paper trained on 27,000 of the
     30,000 (a 27k/3k split, ALGORITHM.md §10): put those in train/.
  2. python -m ilct_jax.data.build --dataset=celeb_a_hq_folder/256 \
       --manual_dir=/path/to/celeba_hq
  3. python -m ilct_jax.models.convert_vae --hub_id=stabilityai/sd-vae-ft-ema \
       --out=$HOME/ilct_data/vae/sd-vae-ft-ema
  4. python -m ilct_jax.data.encode --config=configs/celeba.py
     (writes ~/ilct_data/latents/celeb_a_hq, resumable; its stats.npz is
     data.stats_path)
  num_examples is read from the encoded dataset and epochs become steps as
  (num_examples // train.batch_size) * train.epochs.

Table 1 row: "Ours" on CelebA-HQ 256, FID 7.27 (1 NFE) / 6.93 (2 NFE),
recall 0.50 / 0.52. Verified against the authors' run
(train_lct_ot_newc_allnonscalinglayernorm.sh, LCT branch `ot`): 1 GPU, global
batch 128, 1400 epochs of 27,000 latents = 210 steps/epoch, 294,000 steps;
logged FID 7.2677 at epoch 1400 with EMA 0.99993; 2-step 6.9283 with
ts = 0,420,640.

Command:
  python -m ilct_jax.main --config=configs/celeba.py --workdir=runs/celeba

Hardware: the reference ran on one GPU; here any device count works (global
batch 128 must divide over the devices; coupling.group_size=128 pairs all 128
together, the single GPU's OT, on any device count). Precision: float32
(model.dtype), as the authors trained (fp32 with TF32 matmuls), on any
hardware; on H100/H200 GPUs and TPUs --config.model.dtype=bfloat16 runs
convolutions, dense layers and attention in bf16 (norm statistics, loss, OT,
optimizer and EMAs stay float32), untested against the paper's FID. Wall time:
not measured here (no accelerator was available when this config was written);
`python -m ilct_jax.benchmark --config=configs/celeba.py` prints steps/s and
the projected wall time on your hardware.

Deliberate differences from that run (quandao10/LCT branch `ot` at 5e7d492:
the script above, train_cm_latent.py, test_cm_latent_ddp.py), with their
expected effect: a non-finite step freezes the EMAs and 100 of them stop the
run (train.nonfinite=halt; theirs steps the EMAs and halves the lr:
train.nonfinite=authors; no effect unless NaNs occur); checkpoints every
5,000 steps (theirs every 25 epochs = 5,250 steps), every one of the last
100 epochs kept for --mode=sweep (the window they picked from).

Uncertain: the authors picked the best of epochs 1300-1400 and of several
EMAs (--mode=sweep does the same); the FID reference folder most likely holds
the 27k training images as JPEGs (docs/EVAL.md; ALGORITHM.md §15, §17).
"""

import ml_collections

from configs import default, recipe


def get_config() -> ml_collections.ConfigDict:
  """Returns the CelebA-HQ 256 config."""
  config = default.get_config()
  recipe.latent_data(config, "celeb_a_hq_folder/256", "celeb_a_hq", flip=False)
  recipe.paper_recipe(config)
  config.train.batch_size = 128
  config.train.epochs = 1400
  config.coupling.group_size = 128  # One GPU paired its whole batch.
  return config
