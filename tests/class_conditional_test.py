"""Class-conditional training and sampling (docs/ALGORITHM.md §20-§21).

Labelled batches from the digits, label dropout at its rate, the labels
reaching the network (and only through the step's dropout), guidance as the
authors' forward_with_cfg computes it, labelled latents from the encoder's
folder-per-class source, and the config errors that name the fix.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo_dit
from ilct_jax import config_checks, parallel, sampling
from ilct_jax import state as state_lib
from ilct_jax import step as step_lib
from ilct_jax.data import digits, latent_labels, latents, pipeline
from ilct_jax.evaluation import image_files


def tiny_dit(config):
  """The tiny test config with a small class-conditional DiT."""
  config.model.arch = "dit"
  config.model.norm = "rms"
  config.model.num_classes = 10
  config.model.dit.update(depth=2, hidden=32, heads=2, patch=2)
  return config


def test_digit_batches_carry_their_labels(tiny_config):
  config = tiny_dit(tiny_config)
  mesh = parallel.make_mesh()
  it = pipeline.create_iterator(config, mesh, start_step=3)
  x, y = next(it)
  it.close()
  assert x.shape == (16, 8, 8, 1) and y.shape == (16,) and y.dtype == jnp.int32
  assert y.sharding.spec == parallel.batch_sharding(mesh).spec
  # Each label is the digit's own: find the rows in the dataset.
  images, labels = digits.load_digits(8), digits.load_labels()
  x, y = np.asarray(x), np.asarray(y)
  for row, label in zip(x, y):
    matches = np.flatnonzero(np.all(images == row, axis=(1, 2, 3)))
    assert label in labels[matches]


def test_label_dropout_rate_and_null_label():
  labels = jnp.arange(100_000) % 10
  dropped = step_lib.drop_labels(jax.random.key(0), labels, 10, 0.1)
  null = np.asarray(dropped == 10)
  assert abs(null.mean() - 0.1) < 0.005
  kept = np.asarray(dropped)[~null]
  np.testing.assert_array_equal(kept, np.asarray(labels)[~null])


def test_labels_condition_the_network(tiny_config):
  config = tiny_dit(tiny_config)
  model = state_lib.create_model(config)
  params = jax.device_get(
    state_lib.create_train_state(
      config, parallel.make_mesh(jax.devices()[:1])
    ).params
  )
  # Move the zero-initialised adaLN and output layers off zero.
  params = jax.tree.map(
    lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape),
    params,
  )
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  n = jnp.full((4,), 10.0)
  f = lambda y: model.apply({"params": params}, x, n, False, labels=y)
  a, b = f(jnp.array([1, 1, 1, 1])), f(jnp.array([2, 2, 2, 2]))
  assert float(jnp.abs(a - b).max()) > 1e-3
  # None is the null label (row num_classes).
  null = model.apply({"params": params}, x, n, False)
  np.testing.assert_allclose(null, f(jnp.full((4,), 10)), rtol=1e-6)


def test_guidance_is_the_authors_forward_with_cfg():
  """F = F(null) + s (F(y) - F(null)) on the first 3 channels, F(y) after."""

  def net(variables, x, n, labels):  # Any function of the label will do.
    return x * (1.0 + labels[:, None, None, None]) + n[:, None, None, None]

  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4))
  n, y = jnp.array([0.5, 2.0]), jnp.array([3, 5])
  guide = sampling.Guide(scale=1.5, channels=3, null_label=9)
  out = sampling.guided(net, y, guide)(None, x, n)
  cond, uncond = net(None, x, n, y), net(None, x, n, jnp.array([9, 9]))
  want = uncond + 1.5 * (cond - uncond)
  np.testing.assert_allclose(out[..., :3], want[..., :3], rtol=1e-6)
  np.testing.assert_allclose(out[..., 3:], cond[..., 3:], rtol=1e-6)
  every = sampling.Guide(scale=1.5, channels=-1, null_label=9)
  np.testing.assert_allclose(
    sampling.guided(net, y, every)(None, x, n), want, rtol=1e-6
  )
  plain = sampling.Guide(scale=1.0, channels=3, null_label=9)
  np.testing.assert_allclose(
    sampling.guided(net, y, plain)(None, x, n), cond, rtol=1e-6
  )


def test_a_class_conditional_step_trains_and_grids_show_classes(tiny_config):
  config = tiny_dit(tiny_config)
  mesh = parallel.make_mesh()
  state = state_lib.create_train_state(config, mesh)
  fn = step_lib.compile_train_step(config, mesh, total_steps=6)
  it = pipeline.create_iterator(config, mesh, start_step=0)
  for _ in range(2):
    state, metrics = fn(state, next(it))
  it.close()
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 2
  table = state.params["y_embedder_embedding_table"]
  assert table.shape == (11, 32)  # 10 classes + the null row.
  config.sample.label = -1
  np.testing.assert_array_equal(
    sampling.grid_labels(config, 12), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
  )
  config.sample.label = 7
  np.testing.assert_array_equal(sampling.grid_labels(config, 3), [7, 7, 7])
  config.sample.label = -1
  drawn = sampling.random_labels(config, jax.random.key(0), 1000)
  assert set(np.asarray(drawn).tolist()) == set(range(10))


def test_config_errors_name_the_fix(tiny_config):
  unet = tiny_config.copy_and_resolve_references()
  unet.model.num_classes = 10
  with pytest.raises(ValueError, match="need model.arch=dit"):
    config_checks.check_names(unet)
  guided = tiny_dit(tiny_config.copy_and_resolve_references())
  guided.model.label_dropout = 0.0
  guided.sample.cfg_scale = 2.0
  with pytest.raises(ValueError, match="trained with label dropout"):
    config_checks.check_names(guided)
  typo = tiny_dit(tiny_config.copy_and_resolve_references())
  typo.model.dit.size = "M"
  with pytest.raises(ValueError, match="model.dit.size='M' is unknown"):
    config_checks.check_names(typo)
  few = tiny_dit(tiny_config.copy_and_resolve_references())
  few.model.num_classes = 5
  with pytest.raises(ValueError, match="labels up to 9 but model.num_classes"):
    pipeline.create_iterator(few, parallel.make_mesh(), start_step=0)
  config_checks.check_names(demo_dit.get_config())


def test_labels_follow_a_skipped_record(tmp_path):
  """Under data.bad_records=skip the replacement brings its own label."""
  shape = (2, 2, 1)
  labels = np.arange(6, dtype=np.int32)
  stored = np.arange(24, dtype=np.float32).reshape(6, *shape)
  files = [str(tmp_path / "latents-train-00000-of-00001.array_record")]
  from array_record.python import array_record_module

  writer = array_record_module.ArrayRecordWriter(files[0], "group_size:1")
  for i, row in enumerate(stored):
    data = row.tobytes() if i != 2 else row.tobytes()[:8]  # Record 2 bad.
    writer.write(data)
  writer.close()
  mean, std = np.zeros(shape, np.float32), np.ones(shape, np.float32)
  array = latents.LatentArray(files, shape, mean, std, 0.5, "skip", labels)
  x, y = array.labelled(np.array([1, 2, 4]))
  np.testing.assert_array_equal(y, [1, 3, 4])  # 2 -> the next good, 3.
  chex.assert_trees_all_close(
    x[1], latents.normalize(stored[3], mean, std, 0.5)
  )
  assert array.skipped == 1
  np.testing.assert_array_equal(
    latent_labels.merge_labels([np.array(["b", "a"]), np.array(["c", "a"])])[0],
    [1, 0, 2, 0],
  )


def test_the_dit_demo_trains_and_writes_class_grids(tmp_path):
  """configs/demo_dit.py end to end, shortened: 2 steps, then its 10x10
  grids (column k asks for digit k) and a sample of one requested class."""
  from ilct_jax import train
  from ilct_jax.evaluation import write_samples

  config = demo_dit.get_config()
  config.train.num_steps = 2
  config.train.sample_every = 2
  config.train.ckpt_every = 2
  workdir = str(tmp_path / "demo_dit")
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  assert state.params["y_embedder_embedding_table"].shape == (11, 128)
  for name in ("onestep", "twostep"):
    png = tmp_path / "demo_dit" / "samples" / f"{name}_00000002.png"
    grid = image_files.decode(png.read_bytes())
    # 10 x 10 digits of 16 px with 1 px gutters, upscaled 8x.
    assert grid.shape[:2] == ((10 * 17 + 1) * 8,) * 2
  config.sample.label = 7  # The grid's shape: its compiled sampler again.
  written = write_samples.run(config, workdir)
  samples = np.load(written["onestep"].replace(".png", ".npz"))
  assert samples["samples"].shape == (100, 16, 16, 1)


def test_labelled_tfds_examples_give_their_label_to_each_row():
  """data.labels=label: a tfds example's 'label' (imagenet2012's feature),
  mirrors (flip_double rows N..2N-1) keeping their image's."""
  from ilct_jax.data import tfds_images

  rng_ = np.random.default_rng(0)
  source = [
    {"image": rng_.integers(0, 256, (8, 8, 3), np.uint8), "label": k}
    for k in (3, 1, 4)
  ]
  array = tfds_images.ImageArray(source, 8, flip_double=True, labels="label")
  images, labels = array.labelled([0, 2, 3, 5])
  np.testing.assert_array_equal(labels, [3, 4, 3, 4])
  np.testing.assert_array_equal(images[2], images[0][:, ::-1])
  with pytest.raises(ValueError, match="reads each example's 'filename'"):
    tfds_images.ImageArray(source, 8, False, labels="folder").labelled([0])
