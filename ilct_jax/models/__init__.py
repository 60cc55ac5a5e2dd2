"""Flax linen networks: the consistency UNet, the SD VAE and InceptionV3."""
