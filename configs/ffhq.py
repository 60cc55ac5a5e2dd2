"""FFHQ 256 (latents 32x32x4): the paper's FFHQ row (ALGORITHM.md 13).

Data (docs/DATA.md has the details):
  1. Put the 70,000 FFHQ PNGs (images1024x1024 with its numbered subfolders)
     in a folder.
  2. python -m ilct_jax.datasets.build --dataset=ffhq_folder/256 \
       --manual_dir=/path/to/ffhq
  3. python -m ilct_jax.convert_vae --hub_id=stabilityai/sd-vae-ft-ema \
       --out=$HOME/ilct_data/vae/sd-vae-ft-ema
  4. python -m ilct_jax.encode_latents --config=configs/ffhq.py
     (writes ~/ilct_data/latents/ffhq, resumable)
  num_examples is read from the encoded dataset (70,000).
"""

import os

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Returns the FFHQ 256 config."""
  config = default.get_config()

  # --- data
  data = config.data
  data.source = "latents"
  data.name = "ffhq_folder/256"  # Image split that encode_latents reads.
  data.split = "train"
  data.image_size = 32  # Latent side: 256 / 8.
  data.channels = 4
  data.flip_double = False
  # stats_path follows latent_dir unless overridden itself.
  latent_dir = ml_collections.FieldReference(
    os.path.expanduser("~/ilct_data/latents/ffhq")
  )
  data.latent_dir = latent_dir
  data.stats_path = latent_dir + "/stats.npz"
  data.num_examples = -1  # From the dataset's manifest.
  config.vae.path = os.path.expanduser("~/ilct_data/vae/sd-vae-ft-ema")
  # --- end data
  return config
