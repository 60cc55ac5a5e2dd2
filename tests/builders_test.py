"""Image datasets: preprocessing, folder builders, tfds mock data, splits."""

import os

import numpy as np
import pytest
from PIL import Image

from ilct_jax.data import build, image_prep, tfds_images
from ilct_jax.data.builders import image_folder

SIZE = 16


def _write_folder(root: str, n: int = 6, seed: int = 0) -> dict[str, str]:
  """n RGB PNGs of mixed shapes + 1 grayscale + 1 garbage + 1 truncated."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(root, "sub"), exist_ok=True)
  shapes = [(20, 24), (24, 20), (16, 16), (17, 31)]
  for i in range(n):
    h, w = shapes[i % len(shapes)]
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(root, f"img{i:02d}.png"))
  gray = rng.integers(0, 256, (18, 18), dtype=np.uint8)
  Image.fromarray(gray).save(os.path.join(root, "sub", "gray.png"))
  with open(os.path.join(root, "garbage.jpg"), "wb") as f:
    f.write(b"this is not an image")
  full = os.path.join(root, "truncated.png")
  Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(full)
  with open(full, "rb") as f:
    data = f.read()
  with open(full, "wb") as f:
    f.write(data[: len(data) // 2])  # Header intact, pixel data cut.
  return {"gray": "sub/gray.png", "garbage": "garbage.jpg"}


def _build(name: str, manual: str, data_dir: str) -> dict:

  return build.build(name, manual, data_dir)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """The generic folder builder run once over a generated folder."""
  root = str(tmp_path_factory.mktemp("folder"))
  images = os.path.join(root, "images")
  _write_folder(images)
  data_dir = os.path.join(root, "tfds")
  summary = _build(f"local_image_folder/{SIZE}", images, data_dir)
  return {"images": images, "data_dir": data_dir, "summary": summary}


# ---------------------------------------------------------------- preprocess


def test_center_crop_takes_the_central_square():
  image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
  out = image_prep.center_crop_resize(image, 4)
  np.testing.assert_array_equal(out, image[:, 1:5])
  tall = image.transpose(1, 0, 2)  # 6 x 4: rows 1..4 are central.
  np.testing.assert_array_equal(
    image_prep.center_crop_resize(tall, 4), tall[1:5]
  )


def test_resize_is_antialiased_bicubic_and_range_is_signed():
  # A constant image stays constant through crop + resize + mapping.
  image = np.full((40, 30, 3), 51, np.uint8)
  out = image_prep.preprocess(image, 8)
  assert out.shape == (8, 8, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, 51 / 127.5 - 1.0, atol=1e-6)
  np.testing.assert_array_equal(
    image_prep.to_signed(np.array([0, 255], np.uint8)), [-1.0, 1.0]
  )


def test_grayscale_and_alpha_become_rgb():
  gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
  rgb = image_prep.center_crop_resize(gray, 4)
  assert rgb.shape == (4, 4, 3)
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
  rgba = np.zeros((4, 4, 4), np.uint8)
  assert image_prep.center_crop_resize(rgba, 4).shape == (4, 4, 3)


def test_small_image_is_refused_with_one_line():
  with pytest.raises(ValueError) as e:
    image_prep.center_crop_resize(np.zeros((10, 12, 3), np.uint8), 16)
  msg = str(e.value)
  assert "12x10" in msg and "smaller than the target 16x16" in msg
  assert "\n" not in msg


def test_flip_doubling_appends_mirrors():
  rng = np.random.default_rng(1)
  base = [
    {"image": rng.integers(0, 256, (8, 8, 3), np.uint8)} for _ in range(3)
  ]
  array = tfds_images.ImageArray(base, 8, flip_double=True)
  assert array.shape == (6, 8, 8, 3)
  x = array[np.arange(6)]
  np.testing.assert_array_equal(x[3:], x[:3, :, ::-1])
  np.testing.assert_array_equal(x[0], image_prep.to_signed(base[0]["image"]))
  with pytest.raises(IndexError):
    array[[6]]


def test_corrupt_files_are_detected(tmp_path):
  names = _write_folder(str(tmp_path), n=1)
  assert image_prep.load_image(str(tmp_path / names["garbage"])) is None
  assert image_prep.read_size(str(tmp_path / "truncated.png")) == (32, 32)
  assert image_prep.load_image(str(tmp_path / "truncated.png")) is None
  gray = image_prep.load_image(str(tmp_path / names["gray"]))
  assert gray.shape == (18, 18, 3)


# ---------------------------------------------------------------- builders


def test_folder_builder_skips_and_counts_corrupt_files(built):
  summary = built["summary"]
  # 6 RGB + 1 grayscale; the garbage and the truncated file are skipped.
  assert summary["splits"] == {"train": 7}
  assert summary["corrupt"] == {"train": 2}
  assert (
    tfds_images.corrupt_count(f"local_image_folder/{SIZE}", built["data_dir"])
    == 2
  )


def test_folder_builder_stores_preprocessed_images_in_path_order(built):
  src = tfds_images.open_split(
    f"local_image_folder/{SIZE}", "train", built["data_dir"]
  )
  names = [src[i]["filename"].decode() for i in range(len(src))]
  assert names == sorted(names) and "sub/gray.png" in names
  for i, name in enumerate(names):
    image = src[i]["image"]
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    raw = image_prep.load_image(os.path.join(built["images"], name))
    want = image_prep.center_crop_resize(raw, SIZE)
    np.testing.assert_array_equal(image, want)  # PNG storage is lossless.
  gray = src[names.index("sub/gray.png")]["image"]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_per_process_splits_partition_the_set(built, count):
  import tensorflow_datasets as tfds

  builder = tfds.builder(
    f"local_image_folder/{SIZE}", data_dir=built["data_dir"]
  )
  seen = []
  for index in range(count):
    split = tfds.split_for_jax_process(
      "train", process_index=index, process_count=count
    )
    src = builder.as_data_source(split=split)
    seen += [src[i]["filename"] for i in range(len(src))]
  assert len(seen) == 7 and len(set(seen)) == 7


def test_celeb_a_hq_builder_reads_split_subfolders(tmp_path):
  manual = tmp_path / "manual"
  _write_folder(str(manual / "celeb_a_hq" / "train"), n=4)
  _write_folder(str(manual / "celeb_a_hq" / "val"), n=2, seed=1)
  out = _build(f"celeb_a_hq_folder/{SIZE}", str(manual), str(tmp_path / "d"))
  assert out["splits"] == {"train": 5, "validation": 3}
  assert out["corrupt"] == {"train": 2, "validation": 2}


def test_ffhq_builder_walks_numbered_subfolders(tmp_path):
  manual = tmp_path / "manual" / "ffhq"
  _write_folder(str(manual / "00000"), n=3)
  _write_folder(str(manual / "01000"), n=2, seed=2)
  out = _build(f"ffhq_folder/{SIZE}", str(tmp_path / "manual"), str(tmp_path))
  assert out["splits"] == {"train": 7}
  assert out["corrupt"] == {"train": 4}


@pytest.mark.parametrize("why", ["missing", "empty"])
def test_missing_or_empty_folder_is_one_clear_line(tmp_path, why):
  manual = tmp_path / "manual"
  if why == "empty":
    (manual / "celeb_a_hq").mkdir(parents=True)
    (manual / "celeb_a_hq" / "notes.txt").write_text("no images here")
  with pytest.raises(FileNotFoundError) as e:
    _build(f"celeb_a_hq_folder/{SIZE}", str(manual), str(tmp_path / "d"))
  msg = str(e.value)
  assert "\n" not in msg and why in msg
  assert "CelebA-HQ images folder" in msg
  assert f"--dataset=celeb_a_hq_folder/{SIZE}" in msg
  assert "python -m ilct_jax.data.build" in msg
  # Nothing half-written looks finished: the dataset is not prepared.
  assert not (
    tmp_path / "d" / "celeb_a_hq_folder" / str(SIZE) / "1.0.0"
  ).exists()


def test_images_smaller_than_the_size_stop_the_build(tmp_path):
  manual = tmp_path / "m"
  _write_folder(str(manual), n=2)
  Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(manual / "tiny.png")
  with pytest.raises(ValueError) as e:
    _build(f"local_image_folder/{SIZE}", str(manual), str(tmp_path / "d"))
  msg = str(e.value)
  assert "\n" not in msg
  assert "1 image(s)" in msg and "tiny.png 12x10" in msg
  assert "smaller than 16x16" in msg and "local_image_folder/8" in msg
  assert not (
    tmp_path / "d" / "local_image_folder" / str(SIZE) / "1.0.0"
  ).exists()


def test_unbuilt_dataset_says_how_to_build(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    tfds_images.open_split("ffhq_folder/32", "train", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "is not built" in msg
  assert "python -m ilct_jax.data.build --dataset=ffhq_folder/32" in msg


@pytest.mark.parametrize(
  "name",
  [
    "lsun/church_outdoor",
    f"celeb_a_hq_folder/{SIZE}",
    f"ffhq_folder/{SIZE}",
    f"local_image_folder/{SIZE}",
  ],
)
def test_builders_under_tfds_mock_data(name):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=5):
    src = tfds_images.open_split(name, "train")
    # LSUN images have random sizes (5..49 px): all are cropped to squares.
    array = tfds_images.ImageArray(src, 4, flip_double=True)
    x = array[np.arange(10)]
  assert x.shape == (10, 4, 4, 3) and x.dtype == np.float32
  assert -1.0 <= x.min() and x.max() <= 1.0 and x.std() > 0
  np.testing.assert_array_equal(x[5:], x[:5, :, ::-1])


def test_unknown_dataset_or_size_is_one_line(tmp_path):
  for name, part in [
    ("celebahq_folder/256", "Dataset celebahq_folder not found"),
    ("celeb_a_hq_folder/300", "BuilderConfig 300 not found"),
  ]:
    with pytest.raises(ValueError) as e:
      tfds_images.open_split(name, "train", str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and part in msg and "is not a known tfds" in msg


def test_split_built_as_tfrecord_is_refused_with_the_fix(built, tmp_path):
  import tensorflow_datasets as tfds

  builder = image_folder.LocalImageFolder(
    config=str(SIZE), data_dir=str(tmp_path)
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=built["images"]),
    file_format="tfrecord",
  )
  with pytest.raises(ValueError) as e:
    tfds_images.open_split(f"local_image_folder/{SIZE}", "train", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "not stored as ArrayRecord" in msg
  assert "convert_format" in msg
