"""Flax linen networks and their weights: the consistency UNet and its norms,
the SD VAE with its mesh wrapper and converter, InceptionV3 and its converter.
"""
