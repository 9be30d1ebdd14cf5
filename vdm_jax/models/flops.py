"""Analytic FLOPs of the VDM U-Net (`vdm_jax.models.UNet`), for throughput and MFU reports.

A multiply-add counts as 2 FLOPs. Counted, for a batch of B images of H x W x C with
N = B H W pixels, E = `n_embd` channels and L = H W tokens:

- 3x3 convolutions (SAME padding): 2 N 9 C_in C_out each, every output pixel charged the
  full 3x3 window (the usual convention; dense GPU convolution kernels compute the padding
  taps too). With `count_padding=False` only the taps that fall inside the image,
  2 B (3H - 2)(3W - 2) C_in C_out, which is how XLA's cost analysis counts (4% less at
  32 x 32, 16% less at 8 x 8). `conv_in` reads C (1 + 2 F) channels with F Fourier
  frequencies (F = 2, `fourier_exponents`), C without Fourier features; `conv_out` writes C.
- Dense layers: the gamma embedding's two-layer MLP (E -> 4E -> 4E, per example), each
  residual block's conditioning Dense (4E -> E, per example) and the 1x1 `skip` Dense of
  the up blocks, whose input is the concatenation [h, skip] of 2E channels (2 N 2E E).
- Attention (one head over the L = H W tokens): the Q, K, V and output projections
  (4 x 2 N E^2) and the two attention matmuls, Q K^T and softmax(.) V (2 x 2 B L^2 E).

Left out: bias additions, GroupNorm, swish, softmax, dropout, the residual additions, the
sinusoidal embedding and the Fourier features (elementwise, O(N E) against O(N E^2)); XLA's
cost analysis counts these too, so its figure is a few percent higher for small E
(tests/test_flops.py states the measured gaps).

The network has `n_layer` residual blocks down (E -> E), a middle ResNet-attention-ResNet,
`n_layer + 1` blocks up (2E -> E), and with `attention_everywhere` an attention block after
every down and up block.

A training step is charged 3 forward passes (`train_step_flops`), the usual convention: the
backward pass of a convolution or matmul costs two (the gradients of its input and of its
weights).
The VDM loss calls the denoiser once per example, and the schedule, the ELBO terms and the
optimiser update are elementwise or per example, so they are left out as well.
"""

from __future__ import annotations

from vdm_jax.models.embed import fourier_exponents

__all__ = ["train_step_flops", "unet_flops", "unet_flops_breakdown", "unet_flops_from_config"]


def _taps(size: int, count_padding: bool) -> int:
  """Kernel taps along one axis of a 3-wide SAME convolution, summed over its outputs."""
  return 3 * size if count_padding else 3 * size - 2  # the two edge outputs read 1 pad each


def _dense(rows: int, d_in: int, d_out: int) -> int:
  return 2 * rows * d_in * d_out


def unet_flops_breakdown(
  *,
  height: int,
  width: int,
  channels: int,
  n_layer: int,
  n_embd: int,
  fourier_features: bool,
  vocab_size: int,
  attention_everywhere: bool,
  batch: int,
  count_padding: bool = True,
) -> dict[str, int]:
  """Forward-pass FLOPs of the U-Net by part; the values sum to `unet_flops`.

  Args:
    height, width, channels: the image shape H x W x C.
    n_layer, n_embd, fourier_features, attention_everywhere: as `UNet`'s attributes.
    vocab_size: V of the data (sets the number of Fourier frequencies).
    batch: images per forward pass.
    count_padding: charge each convolution output the full 3x3 window (True), or only the
      taps inside the image (False, XLA's count).

  Returns:
    `{"embed", "conv_in", "down", "mid", "up", "conv_out"}`: the gamma MLP, the input
    convolution, the down blocks (with their attention blocks if `attention_everywhere`),
    the middle, the up blocks (likewise) and the output convolution.

  >>> parts = unet_flops_breakdown(height=8, width=8, channels=1, n_layer=1, n_embd=16,
  ...   fourier_features=False, vocab_size=17, attention_everywhere=False, batch=1)
  >>> parts["conv_in"] == 2 * 64 * 9 * 1 * 16
  True
  """
  for name, value in [
    ("height", height),
    ("width", width),
    ("channels", channels),
    ("n_embd", n_embd),
    ("batch", batch),
    ("vocab_size", vocab_size),
  ]:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive int, got {value!r}.")
  if isinstance(n_layer, bool) or not isinstance(n_layer, int) or n_layer < 0:
    raise ValueError(f"n_layer must be an int >= 0, got {n_layer!r}.")
  e, tokens = n_embd, height * width
  pixels = batch * tokens
  windows = batch * _taps(height, count_padding) * _taps(width, count_padding)  # N 9 if padded

  def conv3x3(c_in: int, c_out: int) -> int:
    return 2 * windows * c_in * c_out

  first, last = fourier_exponents(vocab_size)
  c_in = channels * (1 + 2 * (last - first)) if fourier_features else channels

  def resnet(block_in: int) -> int:
    flops = conv3x3(block_in, e) + _dense(batch, 4 * e, e) + conv3x3(e, e)
    if block_in != e:
      flops += _dense(pixels, block_in, e)  # the 1x1 `skip` Dense
    return flops

  attention = 4 * _dense(pixels, e, e) + 2 * (2 * batch * tokens * tokens * e)
  extra = attention if attention_everywhere else 0
  return {
    "embed": _dense(batch, e, 4 * e) + _dense(batch, 4 * e, 4 * e),
    "conv_in": conv3x3(c_in, e),
    "down": n_layer * (resnet(e) + extra),
    "mid": 2 * resnet(e) + attention,
    "up": (n_layer + 1) * (resnet(2 * e) + extra),
    "conv_out": conv3x3(e, channels),
  }


def unet_flops(**kwargs) -> int:
  """FLOPs of one forward pass of the U-Net on a batch (a multiply-add = 2 FLOPs): the sum
  of `unet_flops_breakdown(**kwargs)`, whose keyword arguments it takes.

  Convolutions, dense layers and attention are counted; elementwise operations and
  normalisations are not (see the module docstring).

  >>> unet_flops(height=32, width=32, channels=3, n_layer=8, n_embd=128,
  ...   fourier_features=True, vocab_size=256, attention_everywhere=False, batch=1)
  15514206208
  """
  return sum(unet_flops_breakdown(**kwargs).values())


def train_step_flops(**kwargs) -> int:
  """FLOPs of one training step: 3 x `unet_flops(**kwargs)` (forward + 2x for backward)."""
  return 3 * unet_flops(**kwargs)


def unet_flops_from_config(
  config, info, batch: int | None = None, *, train: bool = False, count_padding: bool = True
) -> int:
  """`unet_flops` (or `train_step_flops` with `train=True`) of the U-Net of `config.model`.

  Args:
    config: a project config (`vdm_jax.config.base_config` and its deltas); reads
      `model.n_layer`, `model.n_embd`, `model.fourier_features`,
      `model.attention_everywhere` and, when `batch` is None, `train.batch_size`.
    info: a `data.DatasetInfo` (its `shape` (H, W, C) and `vocab_size`), or a shape
      (H, W, C), with V = 256 (the number of Fourier frequencies is 2 for any V).
    batch: images per step; None for `config.train.batch_size`.
    train: count a training step (3 forward passes) instead of one forward pass.
    count_padding: as in `unet_flops_breakdown`.
  """
  if config.model.denoiser != "unet":
    raise ValueError(
      f"unet_flops_from_config counts the U-Net; config.model.denoiser is "
      f"{config.model.denoiser!r}."
    )
  shape = tuple(getattr(info, "shape", info))
  vocab_size = getattr(info, "vocab_size", 256)
  if len(shape) != 3:
    raise ValueError(f"The U-Net takes images [H, W, C]; got the shape {shape}.")
  height, width, channels = shape
  m = config.model
  count = train_step_flops if train else unet_flops
  return count(
    height=height,
    width=width,
    channels=channels,
    n_layer=m.n_layer,
    n_embd=m.n_embd,
    fourier_features=m.fourier_features,
    vocab_size=vocab_size,
    attention_everywhere=m.attention_everywhere,
    batch=config.train.batch_size if batch is None else batch,
    count_padding=count_padding,
  )
