"""encode: exact samples, stats, resume, hosts, refusals, end to end."""

import filecmp
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from ilct_jax import parallel, rng, run_config, train
from ilct_jax import state as state_lib
from ilct_jax.data import (
  build,
  encode,
  latent_labels,
  latents,
  pipeline,
  tfds_images,
)
from ilct_jax.evaluation import image_files, write_samples
from ilct_jax.models import autoencoder, vae_files
from ilct_jax.models import vae as vae_lib
from tests.cluster import Cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 20  # Plus one corrupt file, skipped by the builder.
CHUNK = 6  # -> chunks of 6, 6, 6, 2: the last one is short.


def _tiny_vae(seed: int = 0):
  # Two levels: 16x16 images -> 8x8x4 latents, like the tiny UNet's input.
  vae = vae_lib.AutoencoderKL(
    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4
  )
  return vae, vae_lib.random_params(vae, seed)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A built image folder, a saved tiny VAE and one reference encode."""
  from configs import tiny

  root = tmp_path_factory.mktemp("enc")
  folder = root / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(N_IMAGES):
    pixels = rng.integers(0, 256, (16 + i % 3, 18, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"{i:03d}.png")
  (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
  build.build("local_image_folder/16", str(folder), str(root / "tfds"))
  vae, params = _tiny_vae()
  vae_files.save_vae(str(root / "vae"), vae, params)

  def config(latent_dir: str):
    c = tiny.get_config()
    d = c.data
    d.source, d.name, d.data_dir = "latents", "local_image_folder/16", ""
    d.data_dir = str(root / "tfds")
    d.image_size, d.channels = 8, 4
    d.encode_chunk, d.encode_batch = CHUNK, 8
    d.latent_dir = str(latent_dir)
    c.vae.path = str(root / "vae")
    c.seed = 3
    return c

  ref = root / "ref"
  manifest = encode.run(config(ref), str(ref))
  return {
    "root": root,
    "config": config,
    "ref": str(ref),
    "vae": (vae, params),
    "manifest": manifest,
  }


def _stored(config) -> np.ndarray:
  array = latents.open_latents(config)
  return array.stored(np.arange(len(array)))


def _same_dataset(a: str, b: str) -> None:
  """Every latent chunk and the stats of two output dirs are identical."""
  shards = json.load(open(os.path.join(a, latents.MANIFEST)))["files"]
  for name in shards + [latents.STATS]:
    assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), False), (
      name
    )


def test_manifest_describes_the_dataset(setup):
  m = setup["manifest"]
  assert m["complete"] and m["num_examples"] == N_IMAGES
  assert m["shape"] == [8, 8, 4] and m["dtype"] == "float32"
  assert m["num_chunks"] == 4 and len(m["files"]) == 4
  assert m["source"]["corrupt_skipped"] == 1
  assert m["vae"]["fingerprint"] == latents.vae_fingerprint(
    setup["config"]("").vae.path
  )


def test_stats_equal_numpy_over_the_encoded_set(setup):
  config = setup["config"](setup["ref"])
  stored = _stored(config)
  unscaled = stored.astype(np.float64) / latents.SCALING_FACTOR
  mean, std = latents.load_stats(
    os.path.join(setup["ref"], "stats.npz"), (8, 8, 4)
  )
  np.testing.assert_allclose(mean, unscaled.mean(0), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(std, unscaled.std(0, ddof=1), rtol=1e-6)
  ref_mean, ref_std = latents.compute_stats(unscaled)
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(std, ref_std, rtol=1e-6)


def test_normalize_then_inverse_returns_the_stored_latents(setup):
  config = setup["config"](setup["ref"])
  array = latents.open_latents(config)
  rows = np.arange(N_IMAGES)
  x0 = array[rows]
  mean, std = latents.load_stats(latents.stats_path(config), (8, 8, 4))
  back = latents.to_stored(x0, mean, std, 0.5)
  np.testing.assert_allclose(back, array.stored(rows), rtol=2e-6, atol=2e-7)
  # Per element the normalized set has mean 0 and std sigma_data = 0.5.
  np.testing.assert_allclose(x0.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(x0.std(0, ddof=1), 0.5, rtol=1e-5)


def test_latents_are_posterior_samples_keyed_by_example_index(setup):
  config = setup["config"](setup["ref"])
  stored = _stored(config)
  vae, params = setup["vae"]
  images = tfds_images.make_array(config, 16)
  base = rng.stream(config.seed, "encode")
  for i in (0, 7, N_IMAGES - 1):
    mean, logvar = autoencoder.encode_pure(vae, params, images[[i]])
    key = jax.random.fold_in(base, i)
    want = autoencoder.sample_latents(key, mean[0], logvar[0])
    np.testing.assert_allclose(stored[i], want, rtol=1e-4, atol=1e-5)
    # A sample, not the posterior mean (ALGORITHM.md §10).
    assert not np.allclose(stored[i], mean[0] * latents.SCALING_FACTOR)


def test_interrupted_encode_resumes_to_the_same_dataset(
  setup, tmp_path, monkeypatch
):
  config = setup["config"](tmp_path)
  real_write, calls = encode.write_chunk, []

  def dying_write(out_dir, shard, stored, labels=None):
    calls.append(shard)
    if len(calls) == 3:  # Killed while writing the third chunk.
      with open(os.path.join(out_dir, shard + ".tmp"), "wb") as f:
        f.write(b"half")
      raise RuntimeError("killed")
    real_write(out_dir, shard, stored, labels)

  monkeypatch.setattr(encode, "write_chunk", dying_write)
  with pytest.raises(RuntimeError, match="killed"):
    encode.run(config, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="is unfinished"):
    latents.open_latents(config)
  calls.clear()
  monkeypatch.setattr(encode, "write_chunk", real_write)
  spy = []
  monkeypatch.setattr(
    encode, "write_chunk", lambda *a: (spy.append(a[1]), real_write(*a))
  )
  manifest = encode.run(config, str(tmp_path))
  assert len(spy) == 2  # Only the two unfinished chunks were encoded.
  assert manifest["files"] == setup["manifest"]["files"]
  _same_dataset(setup["ref"], str(tmp_path))


def test_two_simulated_processes_make_the_single_process_dataset(
  setup, tmp_path
):
  for count in (1, 2, 3, 5):
    parts = [list(encode.owned_chunks(4, p, count)) for p in range(count)]
    assert sorted(sum(parts, [])) == [0, 1, 2, 3]  # Disjoint and complete.
  config = setup["config"](tmp_path)
  plan = {
    k: v for k, v in setup["manifest"].items() if k not in ("files", "stats")
  }
  plan.update(
    complete=False,
    vae={"path": config.vae.path},
    source={k: v for k, v in plan["source"].items() if k != "corrupt_skipped"},
  )
  encode.prepare_dir(str(tmp_path), plan, overwrite=False)
  done = [
    encode.encode_part(
      config, str(tmp_path), plan, process_index=p, process_count=2
    )
    for p in (1, 0)
  ]
  assert done == [8, 12]  # Chunks {2, 3} then {0, 1}.
  encode.finalize(str(tmp_path), plan)
  _same_dataset(setup["ref"], str(tmp_path))
  # A finished directory is refused, and re-encoded only when asked.
  with pytest.raises(FileExistsError) as e:
    encode.run(config, str(tmp_path))
  assert "\n" not in str(e.value) and "--overwrite" in str(e.value)
  encode.run(config, str(tmp_path), overwrite=True)
  _same_dataset(setup["ref"], str(tmp_path))


def test_partial_encode_with_another_vae_is_not_resumed(setup, tmp_path):
  config = setup["config"](tmp_path)
  vae, _ = _tiny_vae()
  vae_files.save_vae(str(tmp_path / "vae2"), vae, _tiny_vae(seed=1)[1])
  plan = encode.make_plan(config, vae, N_IMAGES)
  encode.prepare_dir(str(tmp_path / "out"), plan, overwrite=False)
  config.vae.path = str(tmp_path / "vae2")
  with pytest.raises(ValueError) as e:
    encode.run(config, str(tmp_path / "out"))
  msg = str(e.value)
  assert "\n" not in msg and "vae_fingerprint" in msg and "--overwrite" in msg


def test_training_source_refuses_a_dataset_of_another_vae(setup, tmp_path):
  config = setup["config"](setup["ref"])
  vae, params = _tiny_vae(seed=5)
  vae_files.save_vae(str(tmp_path / "other"), vae, params)
  config.vae.path = str(tmp_path / "other")
  with pytest.raises(ValueError) as e:
    latents.open_latents(config)
  msg = str(e.value)
  assert "\n" not in msg and "another VAE" in msg and "re-encode" in msg


def test_stats_of_the_wrong_shape_are_refused(setup, tmp_path):
  config = setup["config"](setup["ref"])
  config.data.stats_path = str(tmp_path / "stats.npz")
  latents.save_stats(
    config.data.stats_path, np.zeros((4, 4, 4)), np.ones((4, 4, 4))
  )
  with pytest.raises(ValueError) as e:
    latents.open_latents(config)
  msg = str(e.value)
  assert "\n" not in msg and "(4, 4, 4)" in msg and "(8, 8, 4)" in msg


def test_flip_double_encodes_mirrors_as_extra_rows(setup, tmp_path):
  config = setup["config"](tmp_path)
  config.data.flip_double = True
  manifest = encode.run(config, str(tmp_path))
  assert manifest["num_examples"] == 2 * N_IMAGES
  stored = _stored(config)
  vae, params = setup["vae"]
  image = tfds_images.make_array(config, 16)[[0]]
  np.testing.assert_array_equal(
    tfds_images.make_array(config, 16)[[N_IMAGES]], image[:, :, ::-1]
  )
  mean, logvar = autoencoder.encode_pure(vae, params, image[:, :, ::-1])
  key = rng.key_at(3, "encode", N_IMAGES)
  want = autoencoder.sample_latents(key, mean[0], logvar[0])
  np.testing.assert_allclose(stored[N_IMAGES], want, rtol=1e-4, atol=1e-5)
  config.data.flip_double = False  # The training config must agree.
  with pytest.raises(ValueError, match="flip_double=True"):
    latents.open_latents(config)


def test_config_errors_are_one_line(setup, tmp_path):
  config = setup["config"](tmp_path)
  config.data.channels = 3
  with pytest.raises(ValueError, match="set data.channels=4"):
    encode.run(config, str(tmp_path))
  config.data.channels, config.vae.path = 4, ""
  with pytest.raises(ValueError, match="vae.path is empty"):
    encode.run(config, str(tmp_path))


def _cli_config(setup, tmp_path) -> str:
  """A config file like the fixture's config, for the encode CLI."""
  cfg_file = tmp_path / "cfg.py"
  cfg_file.write_text(
    "from configs import tiny\n"
    "def get_config():\n"
    "  c = tiny.get_config()\n"
    "  c.data.source, c.data.name = 'latents', 'local_image_folder/16'\n"
    f"  c.data.data_dir = {str(setup['root'] / 'tfds')!r}\n"
    "  c.data.image_size, c.data.channels = 8, 4\n"
    f"  c.data.encode_chunk, c.seed = {CHUNK}, 3\n"
    f"  c.vae.path = {str(setup['root'] / 'vae')!r}\n"
    "  return c\n"
  )
  return str(cfg_file)


def _train_sample_decode(config, tmp_path) -> None:
  """3 steps of the real compiled step on the real input, then PNG grids.

  train.py's pieces (tests/train_test.py runs the whole loop) with a
  one-level UNet: this test is about the data path, and that UNet compiles
  in a third of the tiny one's time (all loss techniques stay on).
  """

  m = config.model
  m.channel_mult, m.attn_resolutions, m.model_channels = (1,), (), 8
  mesh = parallel.make_mesh()
  state = state_lib.create_train_state(config, mesh)
  steps = train.total_steps(config, pipeline.num_examples(config))
  train_fn = train.compile_step(config, mesh, state, steps)
  batches = pipeline.create_iterator(config, mesh, start_step=0)
  try:
    for _ in range(3):
      state, metrics = train_fn(state, next(batches))
  finally:
    batches.close()
  assert int(jax.device_get(state.step)) == 3
  assert np.isfinite(float(metrics["loss"]))
  samples = write_samples.sample_images(config, state.ema(0.9), num=4)
  for name, (_, grid) in samples.items():
    assert grid.shape == (4, 16, 16, 3) and grid.dtype == np.uint8, name
    path = str(tmp_path / f"{name}.png")
    tiles = image_files.make_grid(grid)
    image_files.save_png(path, tiles)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), tiles)


def test_end_to_end_two_process_encode_train_sample_decode(setup, tmp_path):
  """Folder -> encode CLI as a 2-process JAX cluster -> stats -> 3 train
  steps -> samples -> PNG grid."""
  out = tmp_path / "latents"
  args = [f"--config={_cli_config(setup, tmp_path)}", f"--workdir={out}"]
  two = Cluster(tmp_path, "encode", processes=2, devices=1)
  try:
    two.start(args, ILCT_TEST_PROGRAM="encode")
    assert two.wait() == [0, 0], two.output()
    logs = two.output().split("== ")[1:]
    # 4 chunks (6, 6, 6, 2 latents): each process encodes its own two.
    assert "Process 0/2: 2 of its 2 chunks to encode (12 examples)" in logs[0]
    assert "Process 1/2: 2 of its 2 chunks to encode (8 examples)" in logs[1]
    # Stats and manifest once, by process 0 (which alone reports them).
    assert f"wrote {N_IMAGES} latents" in logs[0]
    assert "corrupt images skipped at build: 1" in logs[0]
    assert "wrote" not in logs[1] and "ETA" in logs[0]
    # Other processes, 1 device each: equal to float rounding.
    np.testing.assert_allclose(
      _stored(setup["config"](out)),
      _stored(setup["config"](setup["ref"])),
      rtol=1e-4,
      atol=1e-5,
    )
  finally:
    two.close()
  config = setup["config"](out)
  # Finished: a second encode is refused (the CLI prints it as one
  # "error: ..." line and exits 1).
  with pytest.raises(FileExistsError, match="pass --overwrite to encode it"):
    encode.run(config, str(out))
  config.data.stats_path = str(out / "stats.npz")
  _train_sample_decode(config, tmp_path)


def test_fig1_reads_an_encoded_latent_set(setup, tmp_path, capsys):
  """`analysis fig1 --source=latents --config=...` on the encoded set."""
  from ilct_jax.lab import analysis, run_files

  config = setup["config"](setup["ref"])
  run_config.write_config(config, str(tmp_path))
  path = str(tmp_path / "config.json")
  values = run_files.load_source("latents", config=path)
  array = latents.open_latents(config)
  assert values.shape == (N_IMAGES, 8, 8, 4)
  np.testing.assert_allclose(
    values, np.asarray(array[np.arange(len(array))]), rtol=1e-6
  )
  # Per-element stats of this very set: every element has mean 0 and
  # (unbiased) std sigma_data, so each channel's pooled std is
  # sigma_data * sqrt((n - 1) / n).
  n, sigma = N_IMAGES, config.ct.sigma_data
  flat = values.reshape(-1, 4)
  np.testing.assert_allclose(flat.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(flat.std(0), sigma * np.sqrt((n - 1) / n), 1e-4)
  out = str(tmp_path / "fig1.png")
  analysis.main(
    ["fig1", "--source=latents", f"--config={path}", f"--out={out}"]
  )
  text = capsys.readouterr().out
  rows = [line.split() for line in text.splitlines()]
  channels = [r for r in rows if r and r[0] in ("0", "1", "2", "3")]
  assert len(channels) == 4 and "gaussian" in text, text
  assert os.path.getsize(out) > 0


def test_class_folders_become_labels_of_the_latents(setup, tmp_path):
  """data.labels=folder: each latent keeps the class of its image's folder
  (mirrors too), the manifest counts the classes, training batches carry
  them; a flat folder is refused with the fix."""
  folder = tmp_path / "classes"
  rng_ = np.random.default_rng(1)
  names = {"cat": 4, "dog": 3, "emu": 2}
  for name, count in names.items():
    (folder / name).mkdir(parents=True)
    for i in range(count):
      pixels = rng_.integers(0, 256, (16, 16, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(folder / name / f"{i}.png")
  build.build("local_image_folder/16", str(folder), str(tmp_path / "tfds"))
  config = setup["config"](tmp_path / "lat")
  config.data.data_dir = str(tmp_path / "tfds")
  config.data.labels = "folder"
  config.data.flip_double = True
  manifest = encode.run(config, str(tmp_path / "lat"))
  assert manifest["num_classes"] == 3 and manifest["labels"] == "folder"
  labels = latent_labels.load_labels(str(tmp_path / "lat"), manifest)
  want = [0] * 4 + [1] * 3 + [2] * 2  # Sorted paths: cat, dog, emu.
  np.testing.assert_array_equal(labels, want + want)  # Mirrors keep theirs.
  config.model.arch, config.model.num_classes = "dit", 3
  config.model.dit.update(depth=1, hidden=16, heads=2, patch=2)
  config.train.batch_size = 8
  src = pipeline._source(config)  # noqa: SLF001 - the labelled source.
  x, y = src.local_batch(0, 0, 1)
  assert x.shape == (8, 8, 8, 4)
  order = src._order(0)[:8]  # noqa: SLF001
  np.testing.assert_array_equal(y, np.asarray(want + want)[order])
  flat = setup["config"](tmp_path / "flat")
  flat.data.labels = "folder"
  with pytest.raises(ValueError, match="not inside a class folder"):
    encode.run(flat, str(tmp_path / "flat"))
