"""The uint8 rules and file formats of the two evaluation protocols."""

import io

import numpy as np
from PIL import Image

from ilct_jax.evaluation import image_files

# Values in [-1, 1] whose quantizations differ between the two rules.
X = np.array([-1.5, -1.0, -0.999, 0.0, 0.002, 0.5, 0.996, 1.0, 7.0], np.float32)
# u = clip((x + 1) / 2, 0, 1) = 0, 0, .0005, .5, .501, .75, .998, 1, 1;
# 255 u = 0, 0, .1275, 127.5, 127.755, 191.25, 254.49, 255, 255.
ROUND = [0, 0, 0, 128, 128, 191, 254, 255, 255]  # floor(255 u + 0.5)
TRUNCATE = [0, 0, 0, 127, 127, 191, 254, 255, 255]  # floor(255 u)


def test_each_protocol_quantizes_by_its_rule():
  assert image_files.PROTOCOLS["paper"] == image_files.Protocol(
    "truncate", "jpeg"
  )
  assert image_files.PROTOCOLS["png"] == image_files.Protocol("round", "png")
  got_round = np.asarray(image_files.to_uint8(X, "round"))
  got_trunc = np.asarray(image_files.to_uint8(X, "truncate"))
  assert got_round.dtype == got_trunc.dtype == np.uint8
  np.testing.assert_array_equal(got_round, ROUND)
  np.testing.assert_array_equal(got_trunc, TRUNCATE)
  np.testing.assert_array_equal(np.asarray(image_files.to_uint8(X)), ROUND)


def test_paper_files_are_pil_default_jpegs_and_png_is_lossless():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (16, 16, 3)).astype(np.float32)
  u8 = np.asarray(image_files.to_uint8(x, "truncate"))
  data, ext = image_files.encode(u8, "jpeg")
  buf = io.BytesIO()
  Image.fromarray(u8).save(buf, format="JPEG")  # The authors' call.
  assert ext == "jpg" and data == buf.getvalue()
  with Image.open(io.BytesIO(data)) as img:
    assert img.format == "JPEG"
  seen = image_files.decode(data)
  assert seen.shape == u8.shape and 0 < np.abs(seen - u8.astype(int)).mean()
  png, ext = image_files.encode(u8, "png")
  assert ext == "png"
  np.testing.assert_array_equal(image_files.decode(png), u8)
