"""Training input: latent/image sources, per-process rows, resume, configs."""

import numpy as np
import pytest

from ilct_jax import parallel, train
from ilct_jax.data import encode, latents, pipeline

N, CHUNK, SHAPE = 52, 16, (8, 8, 4)


def _write_latents(out_dir: str, n: int = N, seed: int = 0) -> np.ndarray:
  """A finished latent dataset of random stored latents (no VAE needed)."""
  rng = np.random.default_rng(seed)
  stored = (rng.normal(size=(n, *SHAPE)) * 0.9 + 0.2).astype(np.float32)
  plan = {
    "format": latents.FORMAT,
    "complete": False,
    "split": "train",
    "source": {
      "name": "fake",
      "split": "train",
      "data_dir": "",
      "images": n,
      "flip_double": False,
      "image_size": 64,
    },
    "vae": {"path": ""},
    "vae_fingerprint": "sha256:none",
    "seed": 0,
    "num_examples": n,
    "shape": list(SHAPE),
    "dtype": "float32",
    "scaling_factor": latents.SCALING_FACTOR,
    "chunk_size": CHUNK,
    "num_chunks": -(-n // CHUNK),
  }
  encode.prepare_dir(out_dir, plan, overwrite=False)
  for j, name in enumerate(encode._shards(plan)):
    lo, hi = encode.chunk_bounds(j, CHUNK, n)
    encode.write_chunk(out_dir, name, stored[lo:hi])
  encode.finalize(out_dir, plan)
  return stored


@pytest.fixture
def latent_config(tiny_config, tmp_path):
  stored = _write_latents(str(tmp_path))
  c = tiny_config
  c.data.source, c.data.latent_dir = "latents", str(tmp_path)
  c.data.image_size, c.data.channels = 8, 4
  c.vae.path = ""  # No VAE to check the dataset against.
  return c, stored


def _normalized(config, stored) -> np.ndarray:
  mean, std = latents.load_stats(latents.stats_path(config), SHAPE)
  return latents.normalize(stored, mean, std, 0.5).astype(np.float32)


def test_latent_batches_are_a_pure_function_of_seed_and_step(latent_config):
  config, stored = latent_config
  src = pipeline._source(config)
  assert src.num_examples == N and tuple(src.example_shape) == SHAPE
  # The same rows as an in-memory ArraySource over the normalized set.
  memory = pipeline.ArraySource(_normalized(config, stored), 16, 0)
  other = pipeline._source(config)  # A fresh (resumed) process.
  steps = range(src.steps_per_epoch * 2 + 1)  # Two epochs and a bit.
  for step in reversed(steps):
    a = src.local_batch(step, 0, 1)
    np.testing.assert_allclose(a, memory.local_batch(step, 0, 1), rtol=1e-6)
    np.testing.assert_array_equal(a, other.local_batch(step, 0, 1))
  epoch = np.concatenate([src.local_batch(s, 0, 1) for s in range(3)])
  assert len(np.unique(epoch.reshape(48, -1), axis=0)) == 48  # No repeats.
  config.seed = 1
  assert not np.allclose(
    pipeline._source(config).local_batch(0, 0, 1),
    src.local_batch(0, 0, 1),
  )


@pytest.mark.parametrize("count", [1, 2, 4])
def test_process_rows_partition_the_global_batch(latent_config, count):
  config, _ = latent_config
  src = pipeline._source(config)
  read = []
  records = src.data._records
  original = records.read
  records.read = lambda keys: (read.append(list(keys)), original(keys))[1]
  for step in (0, 5):
    parts = [src.local_batch(step, p, count) for p in range(count)]
    whole = pipeline._source(config).local_batch(step, 0, 1)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    keys = read[-count:]
    # Each process read only its own 16 / count rows, none twice.
    assert all(len(k) == 16 // count for k in keys)
    assert len(set(sum(keys, []))) == 16


def test_resumed_iterator_yields_the_batches_it_would_have(latent_config):

  config, _ = latent_config
  mesh = parallel.make_mesh()
  it = pipeline.create_iterator(config, mesh, start_step=0)
  try:
    batches = [next(it) for _ in range(5)]
  finally:
    it.close()
  resumed = pipeline.create_iterator(config, mesh, start_step=3)
  try:
    again = [next(resumed) for _ in range(2)]
  finally:
    resumed.close()
  for a, b in zip(batches[3:], again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  first = batches[0]
  assert first.shape == (16, *SHAPE) and first.dtype == np.float32
  assert first.sharding.spec[0] == "data"
  assert len(first.addressable_shards) == 8


def test_num_examples_and_steps_come_from_the_dataset(latent_config):

  config, _ = latent_config
  assert pipeline.num_examples(config) == N
  config.train.num_steps, config.train.epochs = -1, 7
  assert train.total_steps(config, N) == (N // 16) * 7


def test_missing_or_unfinished_latent_dir_is_one_line(tiny_config, tmp_path):
  c = tiny_config
  c.data.source, c.data.image_size, c.data.channels = "latents", 8, 4
  c.data.latent_dir = ""
  with pytest.raises(ValueError, match="data.latent_dir is empty"):
    pipeline.num_examples(c)
  c.data.latent_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError) as e:
    pipeline.num_examples(c)
  assert "has no latent dataset" in str(e.value) and "\n" not in str(e.value)
  assert "python -m ilct_jax.data.encode" in str(e.value)


def test_images_source_reads_a_tfds_split_under_mock_data(tiny_config):
  import tensorflow_datasets as tfds

  c = tiny_config
  c.data.source, c.data.name = "images", "local_image_folder/16"
  c.data.image_size, c.data.channels, c.data.flip_double = 8, 3, True
  with tfds.testing.mock_data(num_examples=20):
    src = pipeline._source(c)
    assert src.num_examples == 40  # 20 images and their mirrors.
    it = pipeline.create_iterator(c, parallel.make_mesh(), start_step=0)
    try:
      batch = np.asarray(next(it))
    finally:
      it.close()
  assert batch.shape == (16, 8, 8, 3)
  assert -1.0 <= batch.min() and batch.max() <= 1.0 and batch.std() > 0


@pytest.mark.parametrize(
  "name, dataset, flip",
  [
    ("celeba", "celeb_a_hq_folder/256", False),
    ("lsun_church", "lsun/church_outdoor", True),
    ("ffhq", "ffhq_folder/256", False),
  ],
)
def test_dataset_configs_point_at_their_data(name, dataset, flip):
  import importlib

  config = importlib.import_module(f"configs.{name}").get_config()
  d = config.data
  assert (d.source, d.name, d.flip_double) == ("latents", dataset, flip)
  assert (d.image_size, d.channels, d.num_examples) == (32, 4, -1)
  assert d.stats_path == d.latent_dir + "/stats.npz"
  config.data.latent_dir = "/elsewhere"  # The stats follow the override.
  assert config.data.stats_path == "/elsewhere/stats.npz"
  assert config.vae.path
