"""ImageNet 256, class-conditional, the authors' DiT-B/2 (ALGORITHM.md §20-21).

Reproduces: the class-conditional ImageNet-256 model of the authors' later
work (quandao10/sLCT README: FID 16.75 at 1 NFE after 560 epochs). The
paper itself has no ImageNet row.

Data (docs/DATA.md):
  1. Download ILSVRC2012_img_train.tar (and _val) from image-net.org into a
     folder (tfds manual download).
  2. python -m ilct_jax.data.build --dataset=imagenet2012 --manual_dir=FOLDER
  3. python -m ilct_jax.models.convert_vae --hub_id=stabilityai/sd-vae-ft-ema \
       --out=$HOME/ilct_data/vae/sd-vae-ft-ema
  4. python -m ilct_jax.data.encode --config=configs/imagenet256_dit.py
     (center-crops to 256, encodes with the SD VAE and stores the 1000 class
     labels beside the latents: data.labels=label)

Command:
  python -m ilct_jax.main --config=configs/imagenet256_dit.py --workdir=runs/in

Hardware: 1.28M latents x 560 epochs at batch 256 is 2.8M steps; the DiT-B/2
(161.3M parameters with the label table) fits any 16 GiB chip replicated, and
train.fsdp=N splits its state over N devices for larger sizes
(model.dit.size=L or XL). Run the preflight and the benchmark first. Wall
time: not measured (no accelerator). Expected FID: 16.75 (1 NFE, their
README; with guidance 1.5, their test script); not reproduced here.

What follows the authors' code (quandao10/LCT branch `trans_reproduce` at
060c3e8, scripts/test_im_repa.sh for the DiT-B/2 SD-VAE checkpoint
"DiT_ve_repa_register_0_B_premlp_noot_karras-0.8,1.5_diff_0.70_rho7_ict"):
DiT-B/2, --linear-act gate_relu, --norm-type rms, --freq-type prev_mlp,
--use-rope, 1000 classes with their label dropout 0.1, --cfg-scale 1.5 on
the first 3 channels, --p-mean -0.8 --p-std 1.5, --diff-rate 0.70,
--diff-lamb 5, rho 7, sigma_data 0.5, start/end scales 8 -> 512 (train_im_repa
.sh), steps 513 and ts 0,256,512, no OT ("noot"), lr 1e-4, RAdam.

Uncertain: the run used REPA (an alignment loss to DINOv2 features, lambda
0.1; not implemented here), --c-by-loss-std and --max-grad-norm 100 (not
implemented), and the "ict" noise sampler over their 512-scale grid; the
batch size of that B/2 run is not in the repository (256 here; their DiT-L
script uses 2048); the adaptive c(N) was fitted for end_scales 640.
"""

import ml_collections

from configs import default, recipe


def get_config() -> ml_collections.ConfigDict:
  """Returns the ImageNet-256 class-conditional DiT-B/2 config."""
  config = default.get_config()
  recipe.latent_data(config, "imagenet2012", "imagenet2012", flip=False)
  recipe.paper_recipe(config)
  config.data.labels = "label"  # tfds imagenet2012's 'label' feature.
  config.model.arch = "dit"
  config.model.norm = "rms"
  config.model.num_classes = 1000
  config.model.label_dropout = 0.1
  config.model.dit.size = "B"
  config.model.dit.patch = 2
  config.model.dit.mlp = "gate_relu"
  config.model.dit.rope = True
  config.model.dit.freq_filter = True
  config.ct.p_mean = -0.8
  config.ct.p_std = 1.5
  config.ct.start_scales = 8
  config.ct.end_scales = 512
  config.ct.diffusion_threshold = 0.70
  config.coupling.method = "none"  # "noot" in the run's name.
  config.train.batch_size = 256
  config.train.epochs = 560
  config.sample.grid_scales = 512
  config.sample.ts = (0, 256, 512)
  config.sample.cfg_scale = 1.5
  config.sample.cfg_channels = 3
  return config
