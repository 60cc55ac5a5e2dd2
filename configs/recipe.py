"""Pieces shared by the paper configs: latent data wiring and the recipe.

`paper_recipe` is the method of the paper (ALGORITHM 13/18), most of which is
already the default; `latent_data` points a config at encoded SD-VAE latents.
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
  """The paper's recipe (ALGORITHM 13, 18), set explicitly.

  UNet: 128 ch, mult 1-2-3-4, 4 blocks, attention at 16 and 8, NsLN on every
  norm, dropout 0. CT: Cauchy on the per-sample mean, adaptive c, diffusion
  loss x5 at i >= floor(0.75 N), exact OT over the batch, curriculum
  10 -> 640, lognormal(-1.1, 2.0) indices, 1/dsigma weights. RAdam lr 1e-4
  with coupled L2 1e-4, constant lr, no clipping.
  """
  config.model.norm = "nsln"
  config.model.dropout = 0.0
  config.ct.loss = "cauchy"
  config.ct.c_schedule = "adaptive"
  config.ct.diffusion_loss = True
  config.coupling.method = "exact"
  config.ct.start_scales = 10
  config.ct.end_scales = 640
  config.ema.decays = (0.999, 0.9999, 0.99993, 0.99995)
  config.sample.ema_decay = 0.99993  # The EMA of the paper's numbers.
  config.sample.grid_scales = 640
  config.sample.ts = (0, 420, 640)  # 2-step: sigma_420 = 0.5286.
