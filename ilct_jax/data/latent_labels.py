"""Class labels stored beside a latent dataset (docs/ALGORITHM.md §21).

The encoder (`data.labels` = label | folder) keeps each chunk's labels with
its moments; `merge_labels` turns them into `labels.npz` (int32 `labels`
and, for class folders, the sorted `class_names`); `load_labels` reads them
back for training.
"""

import numpy as np

from ilct_jax import storage

LABELS = "labels.npz"


def merge_labels(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(int32 labels, class names) from per-chunk labels: integers are kept;
  class-folder names become their index among the sorted names."""
  labels = np.concatenate(parts)
  if labels.dtype.kind in "iu":
    return labels.astype(np.int32), np.array([], str)
  names = np.unique(labels.astype(str))
  return np.searchsorted(names, labels.astype(str)).astype(np.int32), names


def load_labels(latent_dir: str, manifest: dict) -> np.ndarray | None:
  """The dataset's labels (labels.npz), or None for an unlabelled one."""
  if not manifest.get("labels_file"):
    return None
  data = storage.load_npz(
    storage.join(latent_dir, manifest["labels_file"]),
    "latent labels",
    "re-encode with ilct_jax.data.encode --overwrite",
    keys=("labels",),
  )
  labels = np.asarray(data["labels"], np.int32)
  if labels.shape != (manifest["num_examples"],):
    raise ValueError(
      f"{latent_dir}/{manifest['labels_file']} holds {labels.shape} labels for "
      f"{manifest['num_examples']} latents; re-encode with --overwrite"
    )
  return labels
