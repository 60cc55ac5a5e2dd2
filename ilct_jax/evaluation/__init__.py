"""Evaluation: from parameters to pixels, features, FID and sample grids.

image_files    the uint8 rules of the protocols, grids, PNG and JPEG files
fid_samples    samples as FID sees them (fused png program / paper JPEG path)
features       InceptionV3 pool3 features and reference statistics (CLI)
fid            statistics, the Frechet distance, precision/recall
evaluate       --mode=eval and FID during training
sweep          --mode=sweep: every kept step x EMA, ranked by FID
write_samples  decoding, sample grids and --mode=sample (the samplers
               themselves are ilct_jax.sampling)
"""
