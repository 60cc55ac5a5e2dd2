"""tfds builders that read a manual folder of JPG/PNG images.

`ImageFolderBuilder` holds the logic; `LocalImageFolder` ("local_image_folder")
is the generic builder, and `celeb_a_hq.py` / `ffhq.py` subclass it with their
own names and instructions. Each builder config is a square size ("16" ...
"1024", default "256"): every image is decoded, center-cropped and resized to
it at build time (image_prep.py), so reading needs no resizing.

The images are searched in `<manual_dir>/<SUBDIR>` if that folder exists, else
in `<manual_dir>` itself (tfds' manual_dir defaults to
`<data_dir>/downloads/manual`; `python -m ilct_jax.data.build
--manual_dir=FOLDER` points it anywhere). If the folder holds any of the
subfolders train/, validation/ (or val/), test/, each is a split; otherwise
every image, at any depth, goes to "train". Files PIL cannot decode are
skipped and counted (in the build log and the dataset's metadata.json);
images smaller than the size stop the build before anything is written.

Examples are written in sorted-path order (no tfds shuffling), as ArrayRecord
when built with `ilct_jax.data.build`, so example i of a split is the
i-th file and can be read by random access.
"""

import dataclasses
import os

import tensorflow_datasets as tfds
from absl import logging

from ilct_jax import storage
from ilct_jax.data import image_prep

SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
# Top-level folder names that define splits (validation accepts "val").
SPLIT_DIRS = {"train": "train", "validation": "validation", "val": "validation"}
SPLIT_DIRS["test"] = "test"
_SHOWN = 3  # File names quoted in an error or warning.


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
  """A square output size in pixels."""

  size: int = 256


def discover_splits(folder: str) -> dict[str, str]:
  """Split name -> folder: the split subfolders, or everything as train."""
  found = {}
  for sub, split in SPLIT_DIRS.items():
    path = storage.join(folder, sub)
    if storage.isdir(path) and split not in found:
      found[split] = path
  return found or {"train": folder}


def largest_size(side: int) -> int | None:
  """The largest builder size not above `side` (None if none fits)."""
  fits = [s for s in SIZES if s <= side]
  return max(fits) if fits else None


class ImageFolderBuilder(
  tfds.core.GeneratorBasedBuilder, skip_registration=True
):
  """Images from a manual folder, center-cropped and resized to the config."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [
    FolderConfig(name=str(s), size=s, description=f"{s}x{s} RGB") for s in SIZES
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "256"
  SUBDIR = "images"  # Looked for first inside the manual dir.
  TITLE = "images"  # What the folder should hold, for error messages.
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put the JPG/PNG images (any depth of subfolders; optional train/, val/,
  test/ split folders) in <manual_dir>/images or in <manual_dir> itself, then
  run `python -m ilct_jax.data.build --dataset=NAME/SIZE
  --manual_dir=FOLDER`.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.size
    return self.dataset_info_from_configs(
      description=f"{self.TITLE} from a local folder, {size}x{size} RGB.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(size, size, 3)),
          "filename": tfds.features.Text(),
        }
      ),
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # Example i is the i-th file in sorted order.
    )

  def _missing(self, folder: str, why: str) -> FileNotFoundError:
    name = f"{self.name}/{self.builder_config.name}"
    return FileNotFoundError(
      f"{self.TITLE} folder {folder} is {why}; put the JPG/PNG files there "
      f"(or anywhere, then pass --manual_dir=FOLDER) and build with `python "
      f"-m ilct_jax.data.build --dataset={name} --manual_dir=FOLDER "
      f"--data_dir={self.data_dir_root}`"
    )

  def _image_root(self, dl_manager) -> str:
    # tfds' own check on manual_dir raises a multi-line AssertionError; read
    # the configured path to raise a one-line error that says what to do.
    manual = str(getattr(dl_manager, "_manual_dir", "") or "")
    nested = storage.join(manual, self.SUBDIR) if manual else ""
    folder = nested if manual and storage.isdir(nested) else manual
    if not manual or not storage.isdir(folder):
      raise self._missing(nested, "missing")
    return folder

  def _scan(self, split: str, folder: str) -> image_prep.FolderScan:
    size = self.builder_config.size
    scan = image_prep.scan_folder(folder, size)
    if scan.small:
      side = min(min(wh) for _, wh in scan.small)
      shown = ", ".join(f"{r} {w}x{h}" for r, (w, h) in scan.small[:_SHOWN])
      hint = largest_size(side)
      hint = f" or build {self.name}/{hint}" if hint else ""
      raise ValueError(
        f"{len(scan.small)} image(s) of split {split} in {folder} are smaller "
        f"than {size}x{size} (e.g. {shown}); remove them{hint}"
      )
    if not scan.usable:
      raise self._missing(
        folder, f"empty (no {'/'.join(image_prep.IMAGE_EXTENSIONS)} files)"
      )
    return scan

  def _split_generators(self, dl_manager):
    root = self._image_root(dl_manager)
    splits = discover_splits(root)
    scans = {s: self._scan(s, f) for s, f in splits.items()}
    meta = self.info.metadata
    meta["source_folder"] = root
    meta["corrupt"] = {s: len(scan.corrupt) for s, scan in scans.items()}
    meta["corrupt_files"] = {s: scan.corrupt[:100] for s, scan in scans.items()}
    return {
      s: self._generate_examples(s, splits[s], scans[s].usable) for s in splits
    }

  def _generate_examples(self, split: str, folder: str, files: list[str]):
    """Yields (relative path, example) for every decodable image."""
    size = self.builder_config.size
    meta = self.info.metadata
    for rel in files:
      image = image_prep.load_image(storage.join(folder, rel))
      if image is None:  # Header fine, pixel data broken (e.g. truncated).
        meta["corrupt"][split] += 1
        meta["corrupt_files"][split].append(rel)
        continue
      rel_posix = rel.replace(os.sep, "/")
      yield (
        rel_posix,
        {
          "image": image_prep.center_crop_resize(image, size),
          "filename": rel_posix,
        },
      )
    bad = meta["corrupt"][split]
    if bad:
      logging.warning(
        "%s/%s split %s: skipped %d corrupt file(s), e.g. %s",
        self.name,
        self.builder_config.name,
        split,
        bad,
        ", ".join(meta["corrupt_files"][split][:_SHOWN]),
      )


class LocalImageFolder(ImageFolderBuilder):
  """Any folder of images ("local_image_folder")."""
