"""FID: Inception pool3 features, Gaussian statistics, Frechet distance, P/R.

Follows pytorch-fid, which the paper's evaluation uses (ALGORITHM.md 15):
uint8 images -> [0, 1] (`ToTensor`) -> the FID InceptionV3 (bilinear resize
to 299, scale to [-1, 1]) -> 2048-d pool3 features -> mean and covariance
(`np.cov(rowvar=False)`, float64) -> the Frechet distance of the two
Gaussians. Reference statistics are `.npz` files with `mu` and `sigma`, the
format pytorch-fid reads (`python -m pytorch_fid a.npz b.npz`). CLI:

  python -m ilct_jax.fid --inception=inception_fid.npz \
    --images=~/datasets/celeba_256_jpg --out=celeba_stats.npz

`precision_recall` is the improved precision/recall of Kynkaanniemi et al.
(NeurIPS 2019, k = 3) on these Inception features. The paper's recall
(`pr50k3_full`, ALGORITHM.md 15) used StyleGAN-ADA's VGG16 features instead,
so numbers from here are not directly comparable with it.
"""

import concurrent.futures
import functools
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from scipy import linalg

from ilct_jax.models import inception

PyTree = Any
FeatureFn = Callable[[Any], jax.Array]

# pytorch-fid fid_score.py IMAGE_EXTENSIONS.
IMAGE_EXTENSIONS = tuple(
  ".bmp .jpg .jpeg .pgm .png .ppm .tif .tiff .webp".split()
)
_HIGHEST = jax.lax.Precision.HIGHEST


def _check_images(images: Any) -> None:
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(
      f"FID features need uint8 RGB images [B, H, W, 3], got {images.dtype} "
      f"{tuple(images.shape)}; convert to uint8 in [0, 255], NHWC, RGB."
    )


@functools.partial(jax.jit, static_argnums=0)
def _pool3(module: Any, variables: PyTree, images: jax.Array) -> jax.Array:
  x = images.astype(jnp.float32) / 255.0  # pytorch-fid's ToTensor.
  return module.apply(variables, x)["pool3"]


def feature_fn(module: inception.InceptionV3, params: PyTree) -> FeatureFn:
  """Returns f(images uint8 [B, H, W, 3]) -> pool3 features [B, 2048] float32.

  Images are divided by 255 (pytorch-fid's `ToTensor`), then the module
  resizes and normalizes. The variables are put on the device once and passed
  as a jit argument (not baked in as constants); each input shape compiles
  once per module configuration, shared by all feature functions.

  Args:
    module: the FID InceptionV3 (`resize_input=True` for pytorch-fid parity).
    params: its variables {'params', 'batch_stats'}.

  Returns:
    The feature function.
  """
  params = jax.device_put(params)

  def f(images: Any) -> jax.Array:
    _check_images(images)
    return _pool3(module, params, images)

  return f


def stats_from_features(feats: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of features, in float64 (pytorch-fid).

  Args:
    feats: [N, D] features, N >= 2.

  Returns:
    (mu [D], sigma [D, D]).
  """
  feats = np.asarray(feats, np.float64)
  if feats.ndim != 2 or feats.shape[0] < 2:
    raise ValueError(
      f"Statistics need features [N, D] with N >= 2, got shape "
      f"{feats.shape}; pass at least two images' pool3 features."
    )
  return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
  mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6
) -> float:
  """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2).

  d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), computed
  as pytorch-fid's `calculate_frechet_distance` (Dougal Sutherland's stable
  version): if the square root of the product is not finite, eps is added to
  both diagonals and the root is taken again; a complex root is accepted only
  when its diagonal's imaginary part is within 1e-3 of zero.

  Args:
    mu1, sigma1: mean [D] and covariance [D, D] of the first set.
    mu2, sigma2: those of the second set.
    eps: diagonal offset used only when the product is singular.

  Returns:
    The distance (a Python float).
  """
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(
      f"Statistics differ in size: mu {mu1.shape} vs {mu2.shape}, sigma "
      f"{sigma1.shape} vs {sigma2.shape}; compute both with the same network."
    )
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    msg = f"FID: singular covariance product; adding {eps} to the diagonals."
    warnings.warn(msg, stacklevel=2)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(
        f"FID: sqrt(sigma1 sigma2) has an imaginary component of "
        f"{np.max(np.abs(covmean.imag)):.3g}; use more samples than dims."
      )
    covmean = covmean.real
  fid = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
  return float(fid - 2.0 * np.trace(covmean))


def save_stats(path: str, mu: Any, sigma: Any) -> None:
  """Writes `mu` and `sigma` (float64) to an `.npz` that pytorch-fid reads."""
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  _check_stats(mu, sigma, path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:  # A file object keeps the exact name.
    np.savez(f, mu=mu, sigma=sigma)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads (mu, sigma) from an `.npz` written here or by pytorch-fid."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"No FID statistics at {path!r}; build them with python -m "
      "ilct_jax.fid --inception=... --images=... --out=" + path
    )
  with np.load(path, allow_pickle=False) as data:
    missing = [k for k in ("mu", "sigma") if k not in data.files]
    if missing:
      raise ValueError(
        f"{path} lacks {missing} (has {data.files}); FID statistics files "
        "hold 'mu' and 'sigma', as written by save_stats or pytorch-fid."
      )
    mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
  _check_stats(mu, sigma, path)
  return mu, sigma


def _check_stats(mu: np.ndarray, sigma: np.ndarray, path: str) -> None:
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(
      f"{path}: mu must be [D] and sigma [D, D], got {mu.shape} and "
      f"{sigma.shape}; recompute them with stats_from_features."
    )


@jax.jit
def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pairwise squared Euclidean distances [R, C] (clamped at 0)."""
  ab = jnp.dot(a, b.T, precision=_HIGHEST)
  aa = jnp.sum(a * a, axis=1)[:, None]
  bb = jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(aa + bb - 2.0 * ab, 0.0)


@jax.jit
def _covered(q: jax.Array, ref: jax.Array, radii2: jax.Array) -> jax.Array:
  """Whether each query lies within some ref point's k-NN ball."""
  return jnp.any(_sq_dists(q, ref) <= radii2[None, :], axis=1)


@functools.partial(jax.jit, static_argnums=3)
def _smallest(rows: jax.Array, cols: jax.Array, n_valid: Any, count: int):
  """The `count` smallest squared distances of each row to valid columns."""
  d = _sq_dists(rows, cols)
  d = jnp.where(jnp.arange(cols.shape[0])[None, :] < n_valid, d, jnp.inf)
  return -jax.lax.top_k(-d, count)[0]


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Pads x to a multiple of `size` rows so each kernel compiles once."""
  extra = -x.shape[0] % size
  return np.concatenate([x, np.repeat(x[-1:], extra, 0)]) if extra else x


def _kth_radii2(x: np.ndarray, k: int, block: int) -> np.ndarray:
  """Squared distance of each row to its k-th nearest other row."""
  # The k+1 smallest distances include the point itself (distance 0), as
  # StyleGAN's `kthvalue(k + 1)` does.
  xp, n = _pad_rows(x, block), x.shape[0]
  radii = []
  for i in range(0, xp.shape[0], block):
    best = [
      _smallest(xp[i : i + block], xp[j : j + block], n - j, k + 1)
      for j in range(0, xp.shape[0], block)
    ]
    best = jnp.sort(jnp.concatenate(best, axis=1), axis=1)
    radii.append(np.asarray(best[:, k]))
  return np.concatenate(radii)[:n]


def _coverage(q: np.ndarray, ref: np.ndarray, k: int, block: int) -> float:
  """Fraction of `q` inside the union of `ref`'s k-NN balls."""
  refp, qp = _pad_rows(ref, block), _pad_rows(q, block)
  radii2 = np.full(refp.shape[0], -1.0, np.float32)  # Padding covers none.
  radii2[: ref.shape[0]] = _kth_radii2(ref, k, block)
  hits = []
  for i in range(0, qp.shape[0], block):
    hit = jnp.zeros(block, bool)
    for j in range(0, refp.shape[0], block):
      cols = slice(j, j + block)
      hit |= _covered(qp[i : i + block], refp[cols], radii2[cols])
    hits.append(np.asarray(hit))
  return float(np.mean(np.concatenate(hits)[: q.shape[0]]))


def precision_recall(
  real_feats: Any, fake_feats: Any, k: int = 3, block: int = 4096
) -> tuple[float, float]:
  """Improved precision and recall (Kynkaanniemi et al. 2019).

  Each set's manifold is the union of balls around its points with radius the
  distance to the point's k-th nearest neighbour in the same set. Precision is
  the fraction of fake points inside the real manifold, recall the fraction of
  real points inside the fake one. Distances are computed in `block` x `block`
  tiles on the default device, so 50k x 50k sets fit in memory.

  Args:
    real_feats: [N, D] features of real images.
    fake_feats: [M, D] features of generated images.
    k: neighbourhood size (3, as StyleGAN's `pr50k3`).
    block: tile side.

  Returns:
    (precision, recall) in [0, 1].
  """
  real = np.asarray(real_feats, np.float32)
  fake = np.asarray(fake_feats, np.float32)
  bad_shape = real.ndim != 2 or real.shape[1:] != fake.shape[1:]
  if bad_shape or min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(
      f"precision_recall needs [N, D] and [M, D] features with N, M > k={k}, "
      f"got {real.shape} and {fake.shape}; pass more samples or a smaller k."
    )
  block = min(block, max(real.shape[0], fake.shape[0]))
  return _coverage(fake, real, k, block), _coverage(real, fake, k, block)


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
  with Image.open(path) as img:
    return np.asarray(img.convert("RGB"), np.uint8)


def _image_files(folder: str) -> list[str]:
  folder = os.path.expanduser(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(
      f"Image folder {folder!r} does not exist; pass a folder of JPG/PNG files."
    )
  files = sorted(
    os.path.join(folder, n)
    for n in os.listdir(folder)
    if n.lower().endswith(IMAGE_EXTENSIONS)
  )
  if not files:
    raise ValueError(
      f"Image folder {folder!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files; "
      "point --images at the folder that contains the images themselves."
    )
  return files


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
  return (*stats_from_features(feats), feats)


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
  return (*stats_from_features(feats), feats)


def benchmark(batch: int = 16, repeats: int = 3) -> dict[str, Any]:
  """Feature-extraction speed on 256x256 uint8 inputs (random weights).

  Args:
    batch: images per call.
    repeats: timed calls after the compiling one; the median is reported.

  Returns:
    images_per_s, seconds_per_batch, compile_s, device and projected_50k_s
    (the wall time of the features of a 50k-sample FID).
  """
  module = inception.InceptionV3()
  f = feature_fn(module, inception.init_variables(module))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)

  def timed() -> float:
    start = time.perf_counter()
    f(images).block_until_ready()
    return time.perf_counter() - start

  compile_s = timed()
  per_batch = statistics.median([timed() for _ in range(repeats)])
  rate = batch / per_batch
  return dict(
    device=jax.devices()[0].device_kind, batch=batch, compile_s=compile_s,
    seconds_per_batch=per_batch, images_per_s=rate,
    projected_50k_s=50_000 / rate,
  )  # fmt: skip


def main(argv: list[str]) -> None:
  """CLI: builds reference statistics from a folder or a tfds split."""
  del argv
  from absl import flags

  from ilct_jax import convert_inception

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
      cfg.tfds, cfg.split, cfg.data_dir, module, params, cfg.batch_size,
      max_examples=cfg.max_examples,
    )  # fmt: skip
  save_stats(cfg.out, mu, sigma)
  if cfg.features_out:
    np.save(cfg.features_out, feats)
  print(f"Wrote {cfg.out}: {feats.shape[0]} images, mu {mu.shape}")


if __name__ == "__main__":
  from absl import app, flags

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
