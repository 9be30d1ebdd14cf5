r"""Bits/dim of lossless codecs and of simple models, to set beside a model's test bits/dim.

A likelihood model's bits/dim is a code length: with arithmetic coding it compresses the
test set to within a few bits of -log2 p(x). So it can be compared with real lossless
codecs run on the same integer images, and with simple models:

* **PNG** (Pillow, `optimize=True`, zlib level 9) and **lossless WebP** (Pillow,
  `lossless=True, quality=100, method=6`: the slowest, strongest settings), each image
  encoded alone (file headers included: they are part of the code), and, as a fairer
  bound for small images, the whole set tiled into one mosaic image (`mosaic`), whose
  file size is divided over the set's N * D dimensions. Every encoding is decoded again
  and checked to give the same pixels.
* **uniform**: log2 V bits per dimension.
* **independent categorical**: p(x) = prod_d p_d(x_d), one categorical per position and
  channel d, fitted on the train split with add-alpha (Laplace for alpha = 1) smoothing,
  p_d(v) = (n_d(v) + alpha) / (N + V alpha), so values never seen at a position in
  training keep probability alpha / (N + V alpha) > 0. `shared=True` pools the counts of
  all positions of a channel (one categorical per channel).

Per-image bits/dim come with the standard error of their mean over images; a mosaic is
one number. Images are integer arrays [N, H, W, C] with values in {0, ..., V - 1}, V <= 256,
C = 1 or 3 (grey images go to WebP as RGB with equal channels; bits are still divided
by the H * W * 1 grey dimensions).
"""

from __future__ import annotations

import io
import json
import math
import time

import numpy as np

from vdm_jax._arith import ceil_div

__all__ = [
  "CODECS",
  "dataset_table",
  "model_row",
  "render_table",
  "categorical_bits_per_dim",
  "codec_bits_per_dim",
  "encode",
  "fit_categorical",
  "mosaic",
  "mosaic_bits_per_dim",
  "table",
]

CODECS = ("png", "webp")
"""The lossless image codecs `table` measures (through Pillow)."""


def _check_images(images, what: str = "images") -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{what} must be [N, H, W, C] with C = 1 or 3, got shape {images.shape}.")
  if not np.issubdtype(images.dtype, np.integer):
    raise ValueError(f"{what} must hold integers, got dtype {images.dtype}.")
  if images.size and (images.min() < 0 or images.max() > 255):
    raise ValueError(f"{what} must be in 0..255, got [{images.min()}, {images.max()}].")
  return images.astype(np.uint8)


def _pil(image: np.ndarray, codec: str):
  import PIL.Image

  if image.shape[-1] == 1:
    if codec == "webp":  # Pillow's WebP encoder takes RGB(A), not L
      return PIL.Image.fromarray(np.repeat(image, 3, axis=-1), "RGB")
    return PIL.Image.fromarray(image[..., 0], "L")
  return PIL.Image.fromarray(image, "RGB")


def encode(image, codec: str) -> bytes:
  """Losslessly encodes one uint8 image [H, W, C] as a PNG or WebP file; checks the decode.

  Returns:
    the file's bytes.
  """
  import PIL.Image

  if codec not in CODECS:
    raise ValueError(f"codec={codec!r} is not one of {CODECS}.")
  image = _check_images(np.asarray(image)[None])[0]
  buffer = io.BytesIO()
  if codec == "png":
    _pil(image, codec).save(buffer, format="PNG", optimize=True, compress_level=9)
  else:
    _pil(image, codec).save(buffer, format="WEBP", lossless=True, quality=100, method=6)
  data = buffer.getvalue()
  with PIL.Image.open(io.BytesIO(data)) as decoded:
    pixels = np.asarray(decoded)
  pixels = pixels.reshape(*pixels.shape[:2], -1)[..., : image.shape[-1]]
  if not np.array_equal(pixels, image):
    raise AssertionError(f"{codec} did not decode to the encoded pixels")
  return data


def codec_bits_per_dim(images, codec: str) -> np.ndarray:
  """Bits/dim of each image encoded alone: 8 * file bytes / (H * W * C). Returns float64 [N]."""
  images = _check_images(images)
  dims = math.prod(images.shape[1:])
  return np.array([8.0 * len(encode(image, codec)) / dims for image in images])


def mosaic(images, cols: int | None = None) -> np.ndarray:
  """Tiles [N, H, W, C] into one [rows * H, cols * W, C] image, row-major, no borders.

  cols defaults to ceil(sqrt(N)); cells after the N-th are zeros.
  """
  images = _check_images(images)
  n, h, w, c = images.shape
  cols = cols or math.ceil(math.sqrt(n))
  rows = ceil_div(n, cols)
  grid = np.zeros((rows * cols, h, w, c), np.uint8)
  grid[:n] = images
  return grid.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def mosaic_bits_per_dim(images, codec: str) -> float:
  """8 * (file bytes of the set's mosaic) / (N * H * W * C): the whole set as one image."""
  images = _check_images(images)
  return 8.0 * len(encode(mosaic(images), codec)) / images.size


def fit_categorical(train, vocab_size: int, *, alpha: float = 1.0, shared: bool = False):
  """log2 probabilities of the independent categorical model, fitted with add-alpha smoothing.

  Args:
    train: integer images [N, H, W, C] in 0..V-1.
    vocab_size: V.
    alpha: pseudo-count added to every value (> 0).
    shared: one categorical per channel (counts pooled over positions) instead of one per
      position and channel.

  Returns:
    float64 [H, W, C, V] (shared: the same [C, V] at every position) of log2 p_d(v).
  """
  train = np.asarray(train)
  if train.ndim != 4 or not np.issubdtype(train.dtype, np.integer):
    raise ValueError(f"train must be integer images [N, H, W, C], got {train.shape} {train.dtype}.")
  if train.min() < 0 or train.max() >= vocab_size:
    raise ValueError(f"train values must be in 0..{vocab_size - 1}, got max {train.max()}.")
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha}.")
  n, h, w, c = train.shape
  one_hot_counts = np.zeros((h * w * c, vocab_size), np.float64)
  flat = train.reshape(n, -1).T  # [D, N]
  for d in range(flat.shape[0]):
    one_hot_counts[d] = np.bincount(flat[d], minlength=vocab_size)
  counts = one_hot_counts.reshape(h, w, c, vocab_size)
  total = n
  if shared:
    counts = np.broadcast_to(counts.sum(axis=(0, 1), keepdims=True), counts.shape)
    total = n * h * w
  return np.log2(counts + alpha) - np.log2(total + vocab_size * alpha)


def categorical_bits_per_dim(log2_probs, images) -> np.ndarray:
  """-log2 p(x) / D of each image under `fit_categorical`'s model. Returns float64 [N]."""
  images = np.asarray(images)
  h, w, c, _ = log2_probs.shape
  if images.shape[1:] != (h, w, c):
    raise ValueError(f"images of shape {images.shape} do not match the model's {(h, w, c)}.")
  d = np.arange(h * w * c)
  flat = np.asarray(log2_probs).reshape(h * w * c, -1)
  return -flat[d, images.reshape(len(images), -1)].sum(axis=1) / (h * w * c)


def _row(method: str, per_image=None, value=None, note: str = "") -> dict:
  if per_image is not None:
    per_image = np.asarray(per_image, np.float64)
    se = per_image.std(ddof=1) / math.sqrt(len(per_image)) if len(per_image) > 1 else 0.0
    return {"method": method, "bpd": float(per_image.mean()), "se": float(se), "note": note}
  return {"method": method, "bpd": float(value), "se": None, "note": note}


def table(train, test, vocab_size: int, *, alpha: float = 1.0) -> list[dict]:
  """The baselines and codecs on `test` (categoricals fitted on `train`).

  Returns:
    rows {"method", "bpd", "se" (None for one-number rows), "note"}.
  """
  test = _check_images(test, "test")
  rows = [_row("uniform", value=math.log2(vocab_size), note=f"log2 {vocab_size}")]
  for shared, name in [(False, "per position and channel"), (True, "per channel, shared")]:
    log2_probs = fit_categorical(train, vocab_size, alpha=alpha, shared=shared)
    rows.append(
      _row(
        f"independent categorical, {name}",
        categorical_bits_per_dim(log2_probs, test),
        note=f"fitted on train, add-{alpha:g} smoothing",
      )
    )
  for codec, label in [("png", "PNG (level 9, optimize)"), ("webp", "WebP lossless (method 6)")]:
    rows.append(_row(f"{label}, each image alone", codec_bits_per_dim(test, codec)))
    cols = math.ceil(math.sqrt(len(test)))
    rows.append(
      _row(
        f"{label}, test set as one mosaic",
        value=mosaic_bits_per_dim(test, codec),
        note=f"{cols} images per row",
      )
    )
  return rows


def _fmt(value) -> str:
  """Three decimals; "n/a" for None (null in the JSON: a number that is not defined)."""
  return "n/a" if value is None else f"{value:.3f}"


def model_row(path: str, name: str, num_examples: int) -> dict:
  """The row of a model's evaluation JSON (written by `vdm-evaluate`) for `table`'s list.

  Raises:
    ValueError: the JSON evaluates another dataset, or another number of examples.
  """
  from vdm_jax.runtime import storage, workdir

  # One written before strict JSON may hold NaN: None, as now.
  result = workdir.to_strict_json(json.loads(storage.read_text(path)))
  if result.get("data") != name or result.get("num_examples") != num_examples:
    raise ValueError(
      f"{path} evaluates {result.get('data')!r} with {result.get('num_examples')} examples, "
      f"not {name!r} with {num_examples}."
    )
  passes = ", ".join(_fmt(b) for b in result.get("pass_bpd", []))
  return {
    "method": f"VDM ({result.get('model', 'vdm')}, step {result['checkpoint_step']})",
    "bpd": result["bpd"],
    "se": result["bpd_se"],
    "note": f"{result.get('passes', 1)} pass(es): {passes}" if passes else result["method"],
  }


def _all_examples(data_config, split: str) -> np.ndarray:
  from vdm_jax import data

  batches = data.eval_batches(data_config, split, global_batch_size=256)
  return np.concatenate([b["image"][b["mask"] > 0] for b in batches])


def dataset_table(data_config, *, split: str = "test", eval_json=(), alpha: float = 1.0) -> dict:
  """A dataset's `table` (categoricals fitted on its train split, codecs on `split`), after
  the rows of the model evaluations `eval_json` (paths, `model_row`); builds an offline
  dataset first if needed (`data.prepare`).

  Returns:
    {"rows", "name", "split", "shape", "vocab_size", "num_train", "num_test", "seconds"
    (the baselines' and codecs' time)}; `render_table` prints it.
  """
  from vdm_jax import data

  data.prepare(data_config)
  info = data.dataset_info(data_config)
  train, test = _all_examples(data_config, "train"), _all_examples(data_config, split)
  rows = [model_row(p, info.name, len(test)) for p in eval_json]
  start = time.perf_counter()
  rows += table(train, test, info.vocab_size, alpha=alpha)
  return {
    "rows": rows,
    "name": info.name,
    "split": split,
    "shape": list(info.shape),
    "vocab_size": info.vocab_size,
    "num_train": len(train),
    "num_test": len(test),
    "seconds": time.perf_counter() - start,
  }


def render_table(result: dict) -> str:
  """`dataset_table`'s result as a heading and a Markdown table (bits/dim, standard error
  where there is one, note)."""
  shape = "x".join(map(str, result["shape"]))
  lines = [
    f"{result['name']} / {result['split']}: {result['num_test']} images of {shape}, "
    f"V = {result['vocab_size']} (categoricals fitted on {result['num_train']} train images; "
    f"baselines and codecs in {result['seconds']:.0f} s)",
    "",
    "| method | bits/dim | standard error | note |",
    "|---|---|---|---|",
  ]
  for r in result["rows"]:
    se = "" if r["se"] is None else f"{r['se']:.3f}"
    lines.append(f"| {r['method']} | {_fmt(r['bpd'])} | {se} | {r['note']} |")
  return "\n".join(lines)
