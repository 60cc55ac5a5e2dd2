"""Builds ilct_jax/data/digits.npz from scikit-learn's copy of UCI digits.

The UCI "Optical Recognition of Handwritten Digits" test set (1,797 images of
8x8 pixels, values 0..16; Alpaydin & Kaynak 1998, CC BY 4.0) ships inside
scikit-learn as `sklearn/datasets/data/digits.csv.gz`: 64 pixel columns and a
label column per row. This script reads that CSV (no network) and stores
`images` (uint8 [1797, 8, 8], 0..16) and `labels` (uint8 [1797]) compressed.

Usage: pip install scikit-learn && python tools/make_digits_npz.py
"""

import gzip
import os

import numpy as np


def main() -> None:
  import sklearn  # Only for the location of its bundled data file.

  src = os.path.join(
    os.path.dirname(sklearn.__file__), "datasets", "data", "digits.csv.gz"
  )
  with gzip.open(src, "rt") as f:
    rows = np.loadtxt(f, delimiter=",", dtype=np.float64)
  images = rows[:, :64].reshape(-1, 8, 8).astype(np.uint8)
  labels = rows[:, 64].astype(np.uint8)
  assert images.shape == (1797, 8, 8) and images.max() == 16, images.shape
  out = os.path.join(
    os.path.dirname(__file__), "..", "ilct_jax", "data", "digits.npz"
  )
  np.savez_compressed(out, images=images, labels=labels)
  print(f"wrote {out}: {images.shape[0]} images, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
  main()
