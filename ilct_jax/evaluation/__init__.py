"""Evaluation: from parameters to pixels, features, FID and sample grids.

image_io   the uint8 rules of the protocols, grids, PNG and JPEG
samples    samples as FID sees them (fused png program / paper JPEG path)
features   InceptionV3 pool3 features and reference statistics (CLI)
fid        statistics, the Frechet distance, precision/recall
evaluate   --mode=eval and FID during training
generate   decoding and --mode=sample
"""
