"""tensorflow-datasets builders for the image sets the paper trained on.

Importing this package registers "local_image_folder", "celeb_a_hq_folder"
and "ffhq_folder" with tfds. LSUN Church uses tfds' own "lsun/church_outdoor"
(see docs/DATA.md for its manual download step). Build any of them with
`python -m ilct_jax.data.build --dataset=NAME/SIZE --manual_dir=FOLDER`.
"""

from ilct_jax.data.builders import celeb_a_hq, ffhq, image_folder

__all__ = ["celeb_a_hq", "ffhq", "image_folder"]
