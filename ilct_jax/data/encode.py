"""Encodes an image split into SD-VAE latents once, resumably, for training.

  python -m ilct_jax.data.encode --config=configs/celeba.py \
    --workdir=/data/latents/celeb_a_hq

reads the tfds image split `data.name`:`data.split` (built with
`ilct_jax.data.build`), preprocesses each image to 8 * data.image_size
pixels (data/image_prep.py; with `data.flip_double` the mirrors are added
as rows N..2N-1), encodes it with the VAE at `vae.path`, and stores
`posterior.sample() * 0.18215` (ALGORITHM.md §10) in the format of
latents.py, plus the per-element mean/std of stored / 0.18215 over the
whole set (unbiased std, NHWC) in stats.npz. The output directory is
`--workdir`, or `data.latent_dir` when --workdir is not given.

Determinism and resume: the work is cut into fixed chunks of
`data.encode_chunk` examples; each finished chunk is one ArrayRecord file,
renamed into place only when complete. The posterior noise of example i uses
the key rng.key_at(seed, "encode", i), independent of batching, process
and device count, so a rerun after an interruption skips the finished chunks
and produces the same dataset as an uninterrupted run. manifest.json is
written last; a finished directory is refused unless --overwrite.

Multi-host: process p of P encodes the contiguous chunk range [J*p/P,
J*(p+1)/P) (the tfds.split_for_jax_process rule) on a mesh of its own
devices: encoding has no cross-example communication, so a mesh spanning
hosts would only force the hosts into lockstep. After a barrier process 0
merges the per-chunk moments and writes stats.npz and the manifest. The
output directory must be shared by all hosts.
"""

from ilct_jax import hostmem

if __name__ == "__main__":
  hostmem.use_huge_pages()  # First: re-executes once, before heavy imports.

import concurrent.futures
import os
import sys
import tempfile
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ilct_jax import parallel, rng, storage
from ilct_jax import progress as progress_lib
from ilct_jax.data import latent_labels, latents, tfds_images
from ilct_jax.models import autoencoder, vae_files

# Fields of plan.json that must match for a rerun to resume a partial run.
_RESUME_KEYS = ("format", "split", "source", "seed", "num_examples", "shape")
_RESUME_KEYS += ("chunk_size", "vae_fingerprint", "labels")
_LOG_EVERY_S = 10.0  # Progress lines at most this often.


def owned_chunks(num_chunks: int, index: int, count: int) -> range:
  """Chunks of process `index` of `count`: a contiguous, even range."""
  return range(num_chunks * index // count, num_chunks * (index + 1) // count)


def chunk_bounds(j: int, chunk: int, total: int) -> tuple[int, int]:
  """Example range [lo, hi) of chunk j."""
  return j * chunk, min((j + 1) * chunk, total)


def make_plan(config: ml_collections.ConfigDict, vae, n_images: int) -> dict:
  """What will be encoded; plan.json, and the manifest's core."""
  d = config.data
  n = n_images * (2 if d.flip_double else 1)
  factor = vae.downsample_factor
  chunk = int(d.encode_chunk)
  if chunk < 1 or n < 2:
    raise ValueError(
      f"need data.encode_chunk >= 1 (got {chunk}) and at least 2 examples "
      f"(got {n}) to encode and compute statistics"
    )
  plan = {
    "format": latents.FORMAT,
    "complete": False,
    "split": d.split,
    "source": {
      "name": d.name,
      "split": d.split,
      "data_dir": d.data_dir,
      "images": n_images,
      "flip_double": bool(d.flip_double),
      "image_size": d.image_size * factor,
    },
    "vae": {"path": os.fspath(storage.path(config.vae.path))},
    "vae_fingerprint": latents.vae_fingerprint(config.vae.path),
    "seed": int(config.seed),
    "num_examples": n,
    "shape": [d.image_size, d.image_size, vae.latent_channels],
    "dtype": "float32",
    "scaling_factor": latents.SCALING_FACTOR,
    "chunk_size": chunk,
    "num_chunks": -(-n // chunk),
  }
  if d.get("labels", "none") != "none":  # Class labels beside the latents.
    plan["labels"] = d.labels
  return plan


def _path(out_dir: str, name: str) -> str:
  return storage.join(out_dir, name)


def _shards(plan: dict) -> list[str]:
  count = plan["num_chunks"]
  return [latents.shard_name(plan["split"], j, count) for j in range(count)]


def _ours(out_dir: str) -> list[str]:
  """Files this job writes in `out_dir` (never anything else)."""
  names = [latents.MANIFEST, latents.STATS, latents.PLAN, latent_labels.LABELS]
  for name in storage.listdir(out_dir):
    ours = name.lstrip(".").startswith("latents-") or name.endswith(".tmp")
    if ours:
      names.append(name)
  return [n for n in names if storage.exists(_path(out_dir, n))]


def prepare_dir(out_dir: str, plan: dict, overwrite: bool) -> None:
  """Refuses a finished or different dataset (unless overwrite); writes plan.

  Args:
    out_dir: output directory (created if needed).
    plan: from `make_plan`.
    overwrite: delete this job's files in `out_dir` and start over.
  """
  storage.makedirs(out_dir)
  if overwrite:
    for name in _ours(out_dir):  # manifest first: stop looking finished.
      storage.path(_path(out_dir, name)).unlink()
  if storage.exists(_path(out_dir, latents.MANIFEST)):
    raise FileExistsError(
      f"{out_dir} already holds a finished latent dataset "
      f"({latents.MANIFEST}); pass --overwrite to encode it again"
    )
  plan_path = _path(out_dir, latents.PLAN)
  if storage.exists(plan_path):
    old = storage.read_json(
      plan_path, "encode plan", "pass --overwrite to start over"
    )
    diff = [k for k in _RESUME_KEYS if old.get(k) != plan.get(k)]
    if diff:
      raise ValueError(
        f"{out_dir} holds a partial encode with different {', '.join(diff)}"
        " (another dataset, seed or VAE); pass --overwrite to start over or"
        " use another --workdir"
      )
    logging.info("Resuming the partial encode in %s", out_dir)
  storage.write_json(plan_path, plan)


def make_encoder(config: ml_collections.ConfigDict, mesh: Mesh):
  """(vae, fn(images, indices) -> stored latents as np.ndarray, batch).

  `fn` runs the jitted encoder over `mesh` (batch on "data") and draws each
  example's posterior sample with the key of its global index.
  """
  if not config.vae.path:
    raise ValueError(
      "vae.path is empty; convert the SD VAE first (`python -m "
      "ilct_jax.models.convert_vae`) and set --config.vae.path=DIR"
    )
  vae, params = vae_files.load_vae(config.vae.path)
  codec = autoencoder.make_codec(vae, params, mesh)
  data = NamedSharding(mesh, P("data"))
  base = rng.stream(config.seed, "encode")

  @jax.jit
  def sample(mean, logvar, index):
    keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
    return jax.vmap(autoencoder.sample_latents)(keys, mean, logvar)

  devices = mesh.shape["data"]
  batch = -(-max(int(config.data.encode_batch), 1) // devices) * devices

  def encode(images: np.ndarray, index: np.ndarray) -> np.ndarray:
    n = len(images)
    pad = batch - n  # The last batch of a chunk is padded, then cut.
    images = np.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0)))
    index = jax.device_put(np.pad(index, (0, pad)).astype(np.int32), data)
    mean, logvar = codec.encode(images)
    return np.asarray(sample(mean, logvar, index))[:n]

  return vae, encode, batch


def encode_chunk(encode: Callable, images, lo: int, hi: int, batch: int):
  """(stored latents, labels or None) of examples [lo, hi), reading the next
  batch meanwhile."""
  starts = list(range(lo, hi, batch))

  def rows(start: int) -> np.ndarray:
    return np.arange(start, min(start + batch, hi))

  read = getattr(images, "labelled", lambda i: (images[i], None))
  out, labels = [], []
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending = pool.submit(read, rows(starts[0]))
    for i, start in enumerate(starts):
      pixels, label = pending.result()
      if i + 1 < len(starts):
        pending = pool.submit(read, rows(starts[i + 1]))
      out.append(encode(pixels, rows(start)))
      labels.append(label)
  if labels[0] is None:
    return np.concatenate(out), None
  return np.concatenate(out), np.concatenate(labels)


def chunk_moments(stored: np.ndarray) -> dict[str, np.ndarray]:
  """Count, mean and sum of squared deviations of stored / 0.18215 (f64)."""
  x = np.asarray(stored, np.float64) / latents.SCALING_FACTOR
  mean = x.mean(axis=0)
  return {
    "count": np.array(len(x)),
    "mean": mean,
    "m2": ((x - mean) ** 2).sum(0),
  }


def write_chunk(
  out_dir: str, shard: str, stored: np.ndarray, labels: np.ndarray | None = None
) -> None:
  """Writes the moments (and the chunk's labels), then the records; the
  records' rename ends it."""
  from array_record.python import array_record_module

  extra = {} if labels is None else {"labels": labels}
  storage.save_npz(
    _path(out_dir, latents.moments_name(shard)),
    **chunk_moments(stored),
    **extra,
  )
  # One record per group, uncompressed: a read is one pread, no decoding
  # (float noise barely compresses; this doubled the batch rate here).
  # ArrayRecord writes local files only: write one, then copy it into place
  # (atomically, so a chunk file exists only when complete).
  options = "group_size:1,uncompressed"
  with tempfile.TemporaryDirectory(prefix="ilct_encode_") as tmp_dir:
    tmp = os.path.join(tmp_dir, shard)
    writer = array_record_module.ArrayRecordWriter(tmp, options)
    for row in np.asarray(stored, "<f4"):
      writer.write(row.tobytes())
    writer.close()
    with open(tmp, "rb") as f:
      storage.write_bytes(_path(out_dir, shard), f.read())


def encode_part(
  config: ml_collections.ConfigDict,
  out_dir: str,
  plan: dict,
  *,
  process_index: int,
  process_count: int,
  mesh: Mesh | None = None,
) -> int:
  """Encodes the unfinished chunks of one process; returns examples encoded.

  Args:
    config: the full config (data.*, vae.path, seed).
    out_dir: the prepared output directory (`prepare_dir`).
    plan: the plan written there.
    process_index: this process (a parameter so tests can simulate hosts).
    process_count: number of processes sharing the work.
    mesh: devices to encode on (default: this process's devices).
  """
  mesh = mesh or Mesh(np.array(jax.local_devices()), ("data",))
  shards = _shards(plan)
  mine = owned_chunks(len(shards), process_index, process_count)
  todo = [j for j in mine if not storage.exists(_path(out_dir, shards[j]))]
  n, size = plan["num_examples"], plan["chunk_size"]
  bounds = [chunk_bounds(j, size, n) for j in todo]
  count = sum(hi - lo for lo, hi in bounds)
  logging.info(
    "Process %d/%d: %d of its %d chunks to encode (%d examples)",
    process_index,
    process_count,
    len(todo),
    len(mine),
    count,
  )
  if not todo:
    return 0
  _, encode, batch = make_encoder(config, mesh)
  images = tfds_images.make_array(config, plan["source"]["image_size"])
  progress = progress_lib.Progress(
    count, f"encode {plan['source']['name']}", "examples", _LOG_EVERY_S
  )
  for j, (lo, hi) in zip(todo, bounds):
    stored, labels = encode_chunk(encode, images, lo, hi, batch)
    write_chunk(out_dir, shards[j], stored, labels)
    progress.update(hi - lo)
  return count


def finalize(out_dir: str, plan: dict, corrupt: int | None = None) -> dict:
  """Stats from the chunk moments, then the manifest (written last)."""
  shards = _shards(plan)
  missing = [s for s in shards if not storage.exists(_path(out_dir, s))]
  if missing:
    raise RuntimeError(
      f"{len(missing)} of {len(shards)} latent chunks are missing in "
      f"{out_dir} (e.g. {missing[0]}); re-run ilct_jax.data.encode to "
      "finish them"
    )
  parts = []
  for shard in shards:
    parts.append(
      storage.load_npz(
        _path(out_dir, latents.moments_name(shard)),
        "chunk moments",
        "re-run ilct_jax.data.encode with --overwrite",
        keys=("count", "mean", "m2"),
      )
    )
  mean, std, count = latents.merge_moments(parts)
  if count != plan["num_examples"]:
    raise RuntimeError(
      f"chunks hold {count} latents, the plan says {plan['num_examples']}; "
      "re-run ilct_jax.data.encode with --overwrite"
    )
  latents.save_stats(_path(out_dir, latents.STATS), mean, std)
  manifest = dict(plan, complete=True, files=shards, stats=latents.STATS)
  if plan.get("labels", "none") != "none":
    manifest.update(_write_labels(out_dir, parts, shards))
  manifest["vae"] = dict(plan["vae"], fingerprint=plan["vae_fingerprint"])
  manifest["source"] = dict(plan["source"], corrupt_skipped=corrupt)
  storage.write_json(_path(out_dir, latents.MANIFEST), manifest)
  return manifest


def _write_labels(out_dir: str, parts: list[dict], shards: list[str]) -> dict:
  """labels.npz from the chunks' labels; the manifest's label fields."""
  missing = [s for s, p in zip(shards, parts) if "labels" not in p]
  if missing:
    raise RuntimeError(
      f"chunk {missing[0]} has no labels though the plan asks for them; "
      "re-run ilct_jax.data.encode with --overwrite"
    )
  labels, names = latent_labels.merge_labels([p["labels"] for p in parts])
  storage.save_npz(
    _path(out_dir, latent_labels.LABELS), labels=labels, class_names=names
  )
  classes = len(names) if len(names) else int(labels.max()) + 1
  return {"labels_file": latent_labels.LABELS, "num_classes": classes}


def run(
  config: ml_collections.ConfigDict, out_dir: str, overwrite: bool = False
) -> dict[str, Any]:
  """Encodes (or resumes encoding) the configured split into `out_dir`.

  Returns:
    The manifest (process 0), or the plan on the other processes.
  """
  d = config.data
  if not config.vae.path:
    raise ValueError(
      "vae.path is empty; convert the SD VAE first (`python -m "
      "ilct_jax.models.convert_vae`) and set --config.vae.path=DIR"
    )
  vae, _ = vae_files.load_vae(config.vae.path)
  if vae.latent_channels != d.channels:
    raise ValueError(
      f"the VAE makes {vae.latent_channels}-channel latents but data.channels"
      f"={d.channels}; set data.channels={vae.latent_channels}"
    )
  n_images = len(tfds_images.open_split(d.name, d.split, d.data_dir))
  plan = make_plan(config, vae, n_images)
  if jax.process_index() == 0:
    prepare_dir(out_dir, plan, overwrite)
  parallel.sync("encode_latents_plan")
  index, count = jax.process_index(), jax.process_count()
  encode_part(config, out_dir, plan, process_index=index, process_count=count)
  parallel.sync("encode_latents_chunks")
  if jax.process_index() != 0:
    return plan
  corrupt = tfds_images.corrupt_count(d.name, d.data_dir)
  return finalize(out_dir, plan, corrupt)


def _main(argv: list[str]) -> None:
  del argv
  flags_ = flags.FLAGS
  # As main.py: the noise of a key must not depend on the JAX default.
  jax.config.update("jax_threefry_partitionable", True)
  parallel.start_cluster(flags_)
  config = flags_["config"].value
  out_dir = flags_.workdir or config.data.latent_dir
  if not out_dir:
    sys.exit("error: give --workdir=DIR or set --config.data.latent_dir=DIR")
  if not storage.is_remote(out_dir):
    out_dir = os.path.expanduser(out_dir)
  try:
    manifest = run(config, out_dir, flags_.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    sys.exit(f"error: {e}")
  if jax.process_index() == 0:
    skipped = manifest["source"].get("corrupt_skipped")
    print(
      f"wrote {manifest['num_examples']} latents {manifest['shape']} and "
      f"{latents.STATS} to {out_dir}; corrupt images skipped at build: "
      f"{'unknown' if skipped is None else skipped}. Train with "
      f"--config.data.latent_dir={out_dir}"
    )


if __name__ == "__main__":
  from absl import app
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "Config file.")
  flags.DEFINE_string("workdir", None, "Output dir (default data.latent_dir).")
  flags.DEFINE_bool("overwrite", False, "Re-encode a finished directory.")
  parallel.define_cluster_flags()
  flags.mark_flags_as_required(["config"])
  from ilct_jax import config_files

  config_files.resolve_sys_argv()
  app.run(_main)
