"""Builds an image dataset as ArrayRecord: `python -m ilct_jax.data.build`.

Example:
  python -m ilct_jax.data.build --dataset=celeb_a_hq_folder/256 \
    --manual_dir=/data/celeba_hq --data_dir=~/tensorflow_datasets

ArrayRecord (not TFRecord) so that the latent encoding job and the `images`
source can read any example by index. Prints the examples per split and how many
corrupt files were skipped; a bad folder ends with a one-line error.
"""

import os
import sys

from absl import app, flags

from ilct_jax.data import tfds_images


def build(name: str, manual_dir: str | None, data_dir: str | None) -> dict:
  """Downloads/prepares `name` as ArrayRecord; returns a summary dict.

  Args:
    name: tfds name with config, e.g. "ffhq_folder/256", "lsun/church_outdoor".
    manual_dir: folder with the manually obtained files (None: tfds default,
      <data_dir>/downloads/manual).
    data_dir: tfds data_dir (None: tfds default).

  Returns:
    {"path", "splits": {split: examples}, "corrupt": {split: skipped}}.
  """
  import tensorflow_datasets as tfds  # Lazy: pulls in TensorFlow.

  builder = tfds_images.get_builder(name, data_dir or "")
  config = tfds.download.DownloadConfig(
    manual_dir=os.path.expanduser(manual_dir) if manual_dir else None
  )
  builder.download_and_prepare(
    download_config=config, file_format="array_record"
  )
  meta = builder.info.metadata or {}
  return {
    "path": str(builder.data_dir),
    "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
    "corrupt": dict(meta.get("corrupt", {})),
  }


def main(argv: list[str]) -> None:
  del argv
  name = flags.FLAGS.dataset
  try:
    out = build(name, flags.FLAGS.manual_dir, flags.FLAGS.data_dir)
  except (FileNotFoundError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"built {name} in {out['path']}")
  for split, n in out["splits"].items():
    skipped = out["corrupt"].get(split, 0)
    print(f"  {split}: {n} examples, {skipped} corrupt file(s) skipped")


if __name__ == "__main__":
  flags.DEFINE_string(
    "dataset", None, "tfds name/config, e.g. celeb_a_hq_folder/256."
  )
  flags.DEFINE_string(
    "manual_dir", None, "Folder with the images (or the LSUN zips)."
  )
  flags.DEFINE_string(
    "data_dir", None, "tfds data_dir (default ~/tensorflow_datasets)."
  )
  flags.mark_flags_as_required(["dataset"])
  app.run(main)
