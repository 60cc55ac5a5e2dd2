"""ilct_jax: improved consistency training in latent space (Dao et al. 2025).

The training core is flat (step, state, consistency, losses, coupling, optim,
checkpointing, train); subpackages hold the rest: `models` (UNet, SD VAE,
InceptionV3, converters), `data` (sources, latents, the encode job, tfds
builders) and `evaluation` (FID, samples, grids); `lab` is the wing of
measuring and inspecting programs, which the library never imports.
docs/DESIGN.md has the map.
"""

__version__ = "0.1.0"
