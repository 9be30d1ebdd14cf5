"""Image grids of samples, written as PNG files."""

from __future__ import annotations

import math
import os

import numpy as np

from vdm_jax._arith import ceil_div

__all__ = ["image_grid", "save_png"]


def image_grid(images, vocab_size: int, *, scale: int = 1) -> np.ndarray:
  """Tiles integer images `[N, H, W, C]` into one uint8 image `[rows*H, cols*W, C]`."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"image_grid expects [N, H, W, C] images, got shape {images.shape}.")
  n, h, w, c = images.shape
  cols = math.ceil(math.sqrt(n))
  rows = ceil_div(n, cols)
  pixels = np.round(images.astype(np.float64) * 255.0 / (vocab_size - 1)).astype(np.uint8)
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for idx in range(n):
    r, q = divmod(idx, cols)
    grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = pixels[idx]
  if scale > 1:
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
  return grid


def save_png(path, grid: np.ndarray) -> None:
  """Writes a uint8 `[H, W, C]` grid (C = 1 or 3) as PNG, atomically (a local path or a
  `gs://` object, `runtime.storage.write_atomic`)."""
  import io

  from PIL import Image

  from vdm_jax.runtime import storage

  img = grid[..., 0] if grid.shape[-1] == 1 else grid
  buffer = io.BytesIO()
  Image.fromarray(img).save(buffer, format="PNG")
  storage.write_atomic(os.fspath(path), buffer.getvalue())
