"""Pieces shared by the paper configs: latent data wiring and the recipe.

`latent_data` points a config at encoded SD-VAE latents; `paper_recipe` sets
what the paper runs use beyond the defaults (which already are the recipe).
Dataset configs call both and then set their batch size and epochs.
"""

import os

import ml_collections

ILCT_DATA = os.path.expanduser("~/ilct_data")  # Default data root.


def latent_data(
  config: ml_collections.ConfigDict, name: str, subdir: str, flip: bool
) -> None:
  """Trains on latents of tfds image dataset `name` (see docs/DATA.md)."""
  data = config.data
  data.source = "latents"
  data.name = name  # Image dataset that encode_latents reads.
  data.split = "train"
  data.image_size = 32  # Latent side: 256 / 8.
  data.channels = 4
  data.flip_double = flip  # Add every image's mirror (the paper's LSUN set).
  # stats_path follows latent_dir unless overridden itself.
  latent_dir = ml_collections.FieldReference(
    os.path.join(ILCT_DATA, "latents", subdir)
  )
  data.latent_dir = latent_dir
  data.stats_path = latent_dir + "/stats.npz"
  data.num_examples = -1  # From the encoded dataset's manifest.
  config.vae.path = os.path.join(ILCT_DATA, "vae", "sd-vae-ft-ema")


def paper_recipe(config: ml_collections.ConfigDict) -> None:
  """What the paper runs set beyond configs/default.py.

  default.py already is the paper's recipe (ALGORITHM.md §13, §18): the
  UNet (128 ch, mult 1-2-3-4, 4 blocks, attention at 16 and 8, NsLN, dropout
  0), Cauchy loss with adaptive c, diffusion loss x5 at i >= floor(0.75 N),
  exact OT over the batch, curriculum 10 -> 640, RAdam lr 1e-4 with coupled
  L2, the tracked EMAs and the 1-/2-step samplers. Only the evaluation
  protocol differs: FID on JPEG-75 files of truncated uint8 samples, and the
  sample count, as the authors measured (docs/EVAL.md).
  """
  config.eval.protocol = "paper"
  # The authors generate ceil(50000 / global batch) * global batch images and
  # score every file (LCT `ot`, test_cm_latent_ddp.py line 161): 50,176 at
  # their single-GPU batch of 256 (docs/EVAL.md).
  config.eval.num_samples = 50_176
  # The paper reports the best of epochs 1300-1400 over several EMAs: keep
  # every checkpoint of the last 100 epochs for --mode=sweep (docs/EVAL.md).
  config.train.keep_last_epochs = 100
