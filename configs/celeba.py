"""CelebA-HQ 256 (latents 32x32x4): the paper's main row (ALGORITHM.md 13).

Data (docs/DATA.md has the details):
  1. Put the CelebA-HQ images in a folder; the paper trained on 27,000 of the
     30,000 (a 27k/3k split, ALGORITHM.md section 10): put those in train/.
  2. python -m ilct_jax.datasets.build --dataset=celeb_a_hq_folder/256 \
       --manual_dir=/path/to/celeba_hq
  3. python -m ilct_jax.convert_vae --hub_id=stabilityai/sd-vae-ft-ema \
       --out=$HOME/ilct_data/vae/sd-vae-ft-ema
  4. python -m ilct_jax.encode_latents --config=configs/celeba.py
     (writes ~/ilct_data/latents/celeb_a_hq, resumable; its stats.npz is
     data.stats_path)
  num_examples is read from the encoded dataset and epochs become steps as
  (num_examples // train.batch_size) * train.epochs.
"""

import os

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  """Returns the CelebA-HQ 256 config."""
  config = default.get_config()

  # --- data
  data = config.data
  data.source = "latents"
  data.name = "celeb_a_hq_folder/256"  # Image split that encode_latents reads.
  data.split = "train"
  data.image_size = 32  # Latent side: 256 / 8.
  data.channels = 4
  data.flip_double = False  # The CelebA run used no flips (ALGORITHM 10).
  # stats_path follows latent_dir unless overridden itself.
  latent_dir = ml_collections.FieldReference(
    os.path.expanduser("~/ilct_data/latents/celeb_a_hq")
  )
  data.latent_dir = latent_dir
  data.stats_path = latent_dir + "/stats.npz"
  data.num_examples = -1  # From the dataset's manifest (27,000 in the paper).
  config.vae.path = os.path.expanduser("~/ilct_data/vae/sd-vae-ft-ema")
  # --- end data
  return config
