"""Tiny config for tests: 8x8 digits, a 1-level UNet, a few steps, all tricks.

Not a research config: it exists so the real code paths (OT pairing, NsLN,
Cauchy + adaptive c, diffusion loss, curriculum, attention in the UNet's
bottleneck) run in seconds on CPU with 8 fake devices. One level rather than
two halves the compile and step times of every test that trains (measured:
step compile 4.7 s vs 10.3 s); multi-level UNets are tested in models_test.
Command: `pytest tests` (see tests/conftest.py).
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Returns the tiny test config."""
  config = default.get_config()
  config.data.source = "digits"
  config.data.image_size = 8
  config.data.channels = 1
  config.model.model_channels = 16
  config.model.channel_mult = (1,)
  config.model.num_blocks = 1
  config.model.attn_resolutions = ()  # The 8x8 bottleneck (in0) attends.
  config.model.head_channels = 8
  config.ct.end_scales = 40  # Stages N = 11, 21, 41: 3 stages over 6 steps.
  config.train.batch_size = 16
  config.train.num_steps = 6
  config.train.log_every = 1
  config.train.ckpt_every = 3
  config.train.keep = 5
  config.train.keep_every = 0
  config.train.sample_every = 0
  config.ema.decays = (0.9, 0.99)
  config.sample.ema_decay = 0.9
  config.sample.num = 4
  config.sample.grid_scales = 40
  config.sample.ts = (0, 20, 40)
  config.data.prefetch = 1
  return config
