"""The data layer: everything between files on disk and a global batch.

pipeline     sources -> per-process rows -> global arrays on the mesh
digits       the built-in demo data (pixel mode)
image_prep   pure image operations (decode, crop, resize, scale, flip)
tfds_images  built tfds image splits, read by random access
latents      encoded latents: normalization, statistics, on-disk format
encode       the offline job that encodes an image split into latents
builders/    tfds builders for image folders (CelebA-HQ, FFHQ, generic)
"""
