"""Built-in demo: the paper's recipe on 16x16 handwritten digits, on a CPU.

Reproduces no paper row. It trains the full improved recipe (Cauchy loss with
the adaptive c schedule, diffusion loss x5 at i >= 0.75 N, exact OT pairing,
NsLN UNet, RAdam with coupled L2, iCT doubling curriculum) in PIXEL mode (no
autoencoder) on the UCI handwritten digits that ship inside the package
(1,797 images of 8x8, upsampled bilinearly to 16x16, in [-1, 1]).

Hardware: 2 CPU cores. Wall time: 8 min 34 s measured (2,000 steps at about
4.7 steps/s). Expected result: 1-step and 2-step sample grids of recognizable
digits under WORKDIR/samples/ (README shows the step-2,000 grids).

  python -m ilct_jax.main --config=configs/demo.py --workdir=/tmp/ilct_demo

Deviations from the paper config, all for size and speed: a small UNet, 16x16
images, batch 64, a higher learning rate (5e-4), a short run (so the sampling
EMA decay is 0.99 rather than 0.99993) and a short curriculum s0 = 10 ->
s1 = 20 (2 stages): with s1 = 160 the 1-step samples were still noise after
2,000 steps, while s1 = 20 gives digits (a coarse grid converges faster).
The 2-step sampler uses index 13 of the 21-level grid
(sigma ~ 0.5, as index 420 of 641 in the paper).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Returns the demo config."""
  config = default.get_config()
  config.data.source = "digits"
  config.data.image_size = 16
  config.data.channels = 1
  config.model.model_channels = 16
  config.model.channel_mult = (1, 2, 4)
  config.model.num_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.head_channels = 32
  config.ct.end_scales = 20
  config.optim.lr = 5e-4
  config.ema.decays = (0.99, 0.999)
  config.train.batch_size = 64
  config.train.num_steps = 2000
  config.train.log_every = 100
  config.train.sample_every = 500
  config.train.ckpt_every = 500
  config.sample.ema_decay = 0.99
  config.sample.num = 64
  config.sample.grid_scales = 20
  config.sample.ts = (0, 13, 20)
  return config
