"""ilct_jax: improved consistency training in latent space (Dao et al. 2025).

Subpackages: `models` (UNet, VAE, InceptionV3), `datasets` (tfds builders).
Modules own one concern each; see README.md for the map.
"""

__version__ = "0.1.0"
