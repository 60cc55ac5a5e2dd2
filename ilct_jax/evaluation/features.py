"""Inception pool3 features of uint8 images, and reference statistics.

pytorch-fid's input path (ALGORITHM.md §15): uint8 -> [0, 1]
(`ToTensor`) -> bilinear resize to 299 without antialiasing -> [-1, 1] -> the
FID InceptionV3 -> 2048-d pool3. `feature_fn` jits that over this host's
devices; `load_feature_fn` caches one per converted weight file. Reference
statistics come from a folder of real images (the paper's reference, read
as pytorch-fid reads it: not recursive) or from a built tfds split. CLI:

  python -m ilct_jax.evaluation.features --inception=inception_fid.npz \
    --images=~/datasets/celeba_256_jpg --out=celeba_stats.npz
"""

import concurrent.futures
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from ilct_jax import parallel, storage
from ilct_jax.data import image_prep
from ilct_jax.evaluation import fid, image_files
from ilct_jax.models import convert_inception, inception

PyTree = Any
FeatureFn = Callable[[Any], jax.Array]

# pytorch-fid fid_score.py IMAGE_EXTENSIONS.
IMAGE_EXTENSIONS = tuple(
  ".bmp .jpg .jpeg .pgm .png .ppm .tif .tiff .webp".split()
)


def _check_images(images: Any) -> None:
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(
      f"FID features need uint8 RGB images [B, H, W, 3], got {images.dtype} "
      f"{tuple(images.shape)}; convert to uint8 in [0, 255], NHWC, RGB."
    )


def pool3(
  module: inception.InceptionV3,
  variables: PyTree,
  images: jax.Array,
  size: int = inception.FID_SIZE,
) -> jax.Array:
  """uint8 [b, H, W, 3] -> pool3 [b, 2048] (pure: usable inside any jit).

  pytorch-fid's input path: /255 (`ToTensor`), bilinear resize to `size`
  without antialiasing (identity when already that size), then the module
  maps [0, 1] to [-1, 1].
  """
  x = images.astype(jnp.float32) / 255.0
  x = inception.resize_bilinear(x, size)
  return module.clone(resize_input=False).apply(variables, x)["pool3"]


def feature_fn(
  module: inception.InceptionV3,
  variables: PyTree,
  size: int = inception.FID_SIZE,
) -> FeatureFn:
  """f(uint8 [b, H, W, 3]) -> pool3 [b, 2048] float32 on this host's devices.

  The batch is split over the host's devices (on CPU one device: virtual CPU
  devices share the cores); b must divide over them. Images are divided by
  255 (pytorch-fid's `ToTensor`), resized bilinearly to `size` (299 in the
  protocol; identity when already that size) and normalized by the module.

  Args:
    module: the FID InceptionV3 (its own resize is bypassed).
    variables: its variables {'params', 'batch_stats'}.
    size: the Inception input side.

  Returns:
    The feature function.
  """
  mesh = parallel.host_mesh(one_cpu_device=True)
  rows, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  variables = jax.device_put(variables, replicated)
  jitted = jax.jit(
    lambda v, images: pool3(module, v, images, size),
    in_shardings=(replicated, rows),
    out_shardings=rows,
  )

  def f(images: Any) -> jax.Array:
    _check_images(images)
    return jitted(variables, images)

  return f


@functools.lru_cache(maxsize=2)
def load_feature_fn(path: str, size: int = inception.FID_SIZE) -> FeatureFn:
  """`feature_fn` of a converted weight file, loaded and jitted once."""
  module, variables = convert_inception.load_inception(path)
  return feature_fn(module, variables, size)


def extract_features(
  batches: Iterable[np.ndarray],
  f: FeatureFn,
  batch_size: int,
  total: int | None = None,
  log_every_s: float | None = 30.0,
) -> np.ndarray:
  """Runs `f` over uint8 batches, padding the last one; prints progress.

  Args:
    batches: iterable of uint8 [b, H, W, 3] arrays with b <= batch_size.
    f: a `feature_fn`.
    batch_size: the one batch size `f` is compiled for.
    total: number of images, for the ETA (None: unknown).
    log_every_s: seconds between progress lines (None: silent).

  Returns:
    [N, 2048] float32 features.
  """
  feats, done, quiet = [], 0, log_every_s is None
  start = last_log = time.time()  # Log every log_every_s s and at the end.
  for batch in batches:
    n = batch.shape[0]
    if n < batch_size:  # Pad: one compiled shape for every batch.
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, 0)])
    if feats:  # Dispatch is async: fetch the previous batch only now.
      feats[-1] = np.asarray(feats[-1])
    feats.append(f(batch)[:n])
    done, now = done + n, time.time()
    if not quiet and (now - last_log >= log_every_s or done == total):
      rate = done / (now - start)
      eta = f", ETA {(total - done) / rate:.0f} s" if total else ""
      print(f"FID features: {done}/{total or '?'} images, {rate:.1f}/s{eta}")
      last_log = now
  if not feats:
    raise ValueError("No images to extract features from; check the input.")
  return np.concatenate([np.asarray(x) for x in feats]).astype(np.float32)


def _load_rgb(path: str) -> np.ndarray:
  return image_files.decode(storage.read_bytes(path))


def _image_files(folder: str) -> list[str]:
  """pytorch-fid's reference set: the images directly in `folder`, sorted."""
  if not storage.isdir(folder):
    raise FileNotFoundError(
      f"Image folder {folder!r} does not exist; pass a folder of JPG/PNG files."
    )
  files = image_prep.list_images(folder, IMAGE_EXTENSIONS, recursive=False)
  if not files:
    raise ValueError(
      f"Image folder {folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files; "
      "point --images at the folder that contains the images themselves."
    )
  return [storage.join(folder, name) for name in files]


def _folder_batches(files: list[str], batch_size: int) -> Iterator[np.ndarray]:
  """Decodes files in threads, one batch ahead of the consumer."""
  chunks = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
  shape, workers = None, min(16, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as ex:
    ahead = [ex.submit(_load_rgb, path) for path in chunks[0]]
    for i, chunk in enumerate(chunks):
      images = [future.result() for future in ahead]
      if i + 1 < len(chunks):
        ahead = [ex.submit(_load_rgb, path) for path in chunks[i + 1]]
      shape = shape or images[0].shape
      for path, img in zip(chunk, images):
        if img.shape != shape:
          raise ValueError(
            f"{path} is {img.shape[:2]}, other images are {shape[:2]}; "
            "resize the folder to one size (the paper uses 256x256)."
          )
      yield np.stack(images)


def reference_stats_from_folder(
  folder: str,
  module: inception.InceptionV3,
  params: PyTree,
  batch_size: int = 100,
  log_every_s: float | None = 30.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """FID statistics of every image in a folder (not recursive, sorted).

  Images are decoded with PIL and converted to RGB; their only resize is the
  network's own bilinear resize to 299 (pytorch-fid). All must share a size.

  Args:
    folder: directory of JPG/PNG (or other PIL-readable) images.
    module: the FID InceptionV3.
    params: its variables.
    batch_size: images per forward pass.
    log_every_s: seconds between progress lines (None: silent).

  Returns:
    (mu, sigma, feats [N, 2048] float32).
  """
  files = _image_files(folder)
  f = feature_fn(module, params)
  batches = _folder_batches(files, batch_size)
  feats = extract_features(batches, f, batch_size, len(files), log_every_s)
  return (*fid.stats_from_features(feats), feats)


def reference_stats_from_tfds(
  name: str,
  split: str,
  data_dir: str | None,
  module: inception.InceptionV3,
  params: PyTree,
  batch_size: int = 100,
  image_key: str = "image",
  max_examples: int | None = None,
  log_every_s: float | None = 30.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """FID statistics of the uint8 images of a prepared tfds split.

  Args:
    name: tfds dataset name (e.g. "celeb_a_hq/256"); must be prepared already.
    split: split name, e.g. "train".
    data_dir: tfds data directory (None: tfds' default).
    module, params, batch_size, log_every_s: see reference_stats_from_folder.
    image_key: feature holding the [H, W, 3] uint8 image.
    max_examples: use only the first examples (None: all).

  Returns:
    (mu, sigma, feats [N, 2048] float32).
  """
  import tensorflow_datasets as tfds  # Lazy: TF is off the hot path.

  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"tfds dataset {name!r} is not prepared in {builder.data_dir!r}; "
      f"build it first (tfds build {name}) or pass the right --data_dir."
    )
  ds = builder.as_dataset(split=split, shuffle_files=False)
  total = builder.info.splits[split].num_examples
  if max_examples is not None:
    ds, total = ds.take(max_examples), min(total, max_examples)
  ds = ds.map(lambda ex: ex[image_key]).batch(batch_size).prefetch(2)
  f = feature_fn(module, params)
  batches = tfds.as_numpy(ds)
  feats = extract_features(batches, f, batch_size, total, log_every_s)
  return (*fid.stats_from_features(feats), feats)


def main(argv: list[str]) -> None:
  """CLI: builds reference statistics from a folder or a tfds split."""
  del argv
  cfg = flags.FLAGS
  if bool(cfg.images) == bool(cfg.tfds):
    raise ValueError("Pass exactly one of --images=FOLDER or --tfds=NAME.")
  module, params = convert_inception.load_inception(cfg.inception)
  if cfg.images:
    mu, sigma, feats = reference_stats_from_folder(
      cfg.images, module, params, cfg.batch_size
    )
  else:
    mu, sigma, feats = reference_stats_from_tfds(
      cfg.tfds,
      cfg.split,
      cfg.data_dir,
      module,
      params,
      cfg.batch_size,
      max_examples=cfg.max_examples,
    )
  fid.save_stats(cfg.out, mu, sigma)
  if cfg.features_out:
    storage.save_npy(cfg.features_out, feats)
  print(f"Wrote {cfg.out}: {feats.shape[0]} images, mu {mu.shape}")


if __name__ == "__main__":
  from absl import app

  flags.DEFINE_string("inception", None, "Converted Inception .npz.")
  flags.DEFINE_string("images", None, "Folder of real images.")
  flags.DEFINE_string("tfds", None, "tfds dataset name (instead of --images).")
  flags.DEFINE_string("split", "train", "tfds split.")
  flags.DEFINE_string("data_dir", None, "tfds data directory.")
  flags.DEFINE_integer("max_examples", None, "Use only the first N (tfds).")
  flags.DEFINE_integer("batch_size", 100, "Images per forward pass.")
  flags.DEFINE_string("out", None, "Output .npz with mu and sigma.")
  flags.DEFINE_string("features_out", None, "Optional .npy of the features.")
  flags.mark_flags_as_required(["inception", "out"])
  app.run(main)
