"""LSUN Church 256 (latents 32x32x4): the paper's LSUN row (ALGORITHM.md 13).

Data (docs/DATA.md has the details):
  1. Download church_outdoor_train_lmdb.zip (and _val_) from the LSUN site
     into <data_dir>/downloads/manual/; tfds' lsun builder reads the LMDB
     with tensorflow-io. (Or export the LMDB to JPGs and build
     local_image_folder/256 from them, then set data.name to that.)
  2. python -m ilct_jax.datasets.build --dataset=lsun/church_outdoor
  3. python -m ilct_jax.convert_vae --hub_id=stabilityai/sd-vae-ft-ema \
       --out=$HOME/ilct_data/vae/sd-vae-ft-ema
  4. python -m ilct_jax.encode_latents --config=configs/lsun_church.py
     (center-crops each image to 256x256; flip_double adds every mirror, as
     the paper's pre-flipped set; writes ~/ilct_data/latents/lsun_church)
  num_examples is read from the encoded dataset (2x the images).
"""

import os

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Returns the LSUN Church 256 config."""
  config = default.get_config()

  # --- data
  data = config.data
  data.source = "latents"
  data.name = "lsun/church_outdoor"  # tfds' own builder (manual zips).
  data.split = "train"
  data.image_size = 32  # Latent side: 256 / 8.
  data.channels = 4
  data.flip_double = True  # latent_church256_flip: images + mirrors.
  # stats_path follows latent_dir unless overridden itself.
  latent_dir = ml_collections.FieldReference(
    os.path.expanduser("~/ilct_data/latents/lsun_church")
  )
  data.latent_dir = latent_dir
  data.stats_path = latent_dir + "/stats.npz"
  data.num_examples = -1  # From the dataset's manifest.
  config.vae.path = os.path.expanduser("~/ilct_data/vae/sd-vae-ft-ema")
  # --- end data
  return config
