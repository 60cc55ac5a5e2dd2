"""Images as files: the uint8 rule, grayscale -> RGB, grids, PNG and JPEG.

Every path from model output to pixels goes through `to_uint8`:
clamp((x + 1) / 2, 0, 1) * 255, rounded half up (torchvision's `save_image`)
for grids, `--mode=sample` and the `png` evaluation protocol, truncated for
the `paper` protocol (the authors' `.to(uint8)`). It runs on the devices
(inside jit) or on the host. The `paper` protocol then writes JPEG at quality
75, PIL's default, as the authors' sampler did (ALGORITHM.md §14), and FID is
computed on the decoded JPEG (docs/EVAL.md).
"""

import dataclasses
import io
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ilct_jax import storage

# The reference saves samples with PIL's `save("x.jpg")`, whose default
# quality is 75 (ALGORITHM.md §14); FID then reads those JPEGs.
JPEG_QUALITY = 75
_PIL_FORMATS = {"png": ("PNG", "png"), "jpeg": ("JPEG", "jpg")}
ROUNDINGS = ("round", "truncate")


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How samples become the pixels FID sees (`eval.protocol`).

  Attributes:
    rounding: "truncate" (floor(x * 255), the authors' `.to(uint8)`) or
      "round" (half up, torchvision's `save_image`).
    fmt: "jpeg" (quality 75, FID on the decoded file) or "png" (lossless).
  """

  rounding: str
  fmt: str


PROTOCOLS = {
  # The authors' sampler: (clamp(x) * 255).to(uint8), PIL JPEG at its
  # default quality 75, FID on those files (ALGORITHM.md §14, §15).
  "paper": Protocol(rounding="truncate", fmt="jpeg"),
  # Lossless and rounded: the usual choice, and what grids use.
  "png": Protocol(rounding="round", fmt="png"),
}


def to_uint8(images: Any, rounding: str = "round") -> jax.Array:
  """[-1, 1] images -> uint8 from u = clip((x + 1) / 2, 0, 1).

  "round": floor(255 u + 0.5); "truncate": floor(255 u). Works on host
  arrays and inside jit; returns a jax array (np.asarray it on the host).
  """
  unit = jnp.clip((jnp.asarray(images, jnp.float32) + 1.0) / 2.0, 0.0, 1.0)
  offset = {"round": 0.5, "truncate": 0.0}[rounding]
  return jnp.floor(unit * 255.0 + offset).astype(jnp.uint8)


def to_rgb(images: Any, xp: Any = np) -> Any:
  """Grayscale (C = 1) -> RGB by repetition; RGB passes through."""
  c = images.shape[-1]
  if c not in (1, 3):
    raise ValueError(
      f"FID needs grayscale or RGB images, got {c} channels; decode latents "
      "first (set vae.path)"
    )
  return xp.repeat(images, 3, axis=-1) if c == 1 else images


def make_grid(
  images: np.ndarray, cols: int | None = None, pad: int = 1, fill: int = 128
) -> np.ndarray:
  """Tiles uint8 [B, H, W, C] into one image with `pad`-pixel gray gutters."""
  images = np.asarray(images)
  b, h, w, c = images.shape
  cols = cols or int(np.ceil(np.sqrt(b)))
  rows = int(np.ceil(b / cols))
  hp, wp = h + pad, w + pad
  grid = np.full((rows * hp + pad, cols * wp + pad, c), fill, images.dtype)
  for i in range(b):
    r, q = divmod(i, cols)
    grid[pad + r * hp : pad + r * hp + h, pad + q * wp : pad + q * wp + w] = (
      images[i]
    )
  return grid


def png_bytes(grid: np.ndarray, upscale: int = 1) -> bytes:
  """A uint8 image as PNG bytes (nearest upscaling for tiny images)."""
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  img = Image.fromarray(grid)
  if upscale > 1:
    img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


def save_png(path: str, grid: np.ndarray, upscale: int = 1) -> None:
  """Writes a uint8 grid as PNG, locally or to gs:// (nearest upscaling)."""
  storage.write_bytes(path, png_bytes(grid, upscale))


def encode(image: np.ndarray, fmt: str) -> tuple[bytes, str]:
  """uint8 [H, W, 3] -> (file bytes, extension) in `fmt` (png | jpeg)."""
  pil_format, ext = _PIL_FORMATS[fmt]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format=pil_format, quality=JPEG_QUALITY)
  return buf.getvalue(), ext


def decode(data: bytes) -> np.ndarray:
  """File bytes -> uint8 RGB [H, W, 3] (what FID sees of a saved sample)."""
  with Image.open(io.BytesIO(data)) as img:
    return np.asarray(img.convert("RGB"), np.uint8)
