"""The VDM denoising network: a ResNet U-Net without downsampling.

Every block keeps the input's spatial resolution (the VDM paper found downsampling hurts
likelihood on 32x32 data): `n_layer` residual blocks down, a middle of
ResNet-attention-ResNet, and `n_layer + 1` residual blocks up, each fed the matching
down activation by concatenation. GroupNorm + swish, dropout inside blocks, gamma
conditioning added inside every block, optional Fourier features of z at the input,
optional self-attention after every block, and a zero-initialised output convolution so
training starts from the prediction 0.

Mixed precision (`dtype="bfloat16"`): convolutions, dense layers and attention compute in
bfloat16 on float32 parameters; GroupNorm statistics, the attention softmax, the Fourier
features of z and the gamma embedding stay in float32, and the output is float32, so the
ELBO terms computed from it are float32 whatever the compute dtype.

Layer loops (`scan_layers=True`): the `n_layer` down blocks are identical, and so are the
`n_layer + 1` up blocks (each takes concat(h, skip), 2 * n_embd channels), so each group
can run as one `flax.linen.scan` over stacked parameters: one block compiled instead of
n_layer, at the price of a different parameter tree (`down`/`up` with a leading layer
axis instead of `down0`, `down1`, ...). `stack_layer_params` and `unstack_layer_params`
convert between the two layouts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models.embed import denoiser_inputs

__all__ = [
  "AttentionBlock",
  "ResnetBlock",
  "UNet",
  "stack_layer_params",
  "unstack_layer_params",
]


def _group_norm(groups: int, dtype, name: str):
  """GroupNorm with statistics and normalisation in float32, the result in `dtype`."""
  norm = nn.GroupNorm(groups, name=name)  # (dtype=bfloat16 would fail strict promotion)
  return lambda x: norm(x.astype(jnp.float32)).astype(dtype)


class ResnetBlock(nn.Module):
  """GroupNorm, swish, 3x3 convolution, plus the conditioning; again with dropout; added to
  the input (projected if its channel count differs). `[B, H, W, C] -> [B, H, W, channels]`."""

  channels: int
  groups: int
  dropout: float
  dtype: Any = jnp.float32  # compute dtype; parameters are float32

  @nn.compact
  def __call__(self, x, cond, train: bool):
    dt = self.dtype
    h = nn.swish(_group_norm(self.groups, dt, "norm0")(x))
    h = nn.Conv(self.channels, (3, 3), dtype=dt, name="conv0")(h)
    h = h + nn.Dense(self.channels, dtype=dt, name="cond")(cond)[:, None, None, :]
    h = nn.swish(_group_norm(self.groups, dt, "norm1")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros, dtype=dt, name="conv1")(h)
    if x.shape[-1] != self.channels:
      x = nn.Dense(self.channels, dtype=dt, name="skip")(x)
    return x.astype(dt) + h


def _attention(query, key, value, *, bias=None, mask=None, dropout_rate=0.0, **_):
  """Dot-product attention `[B, L, heads, d]` for half-precision inputs: the logits are
  accumulated in float32 and the softmax is taken in float32; the weights are cast back
  to the inputs' dtype for the second matmul. (Flax's `force_fp32_for_softmax` leaves
  float32 weights to multiply the half-precision values: a silent promotion.)"""
  if bias is not None or mask is not None or dropout_rate:
    raise NotImplementedError("AttentionBlock uses no bias, mask or attention dropout.")
  logits = jnp.einsum("...qhd,...khd->...hqk", query, key, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits / math.sqrt(query.shape[-1])).astype(value.dtype)
  return jnp.einsum("...hqk,...khd->...qhd", weights, value)


class AttentionBlock(nn.Module):
  """Self-attention over the H x W positions after GroupNorm, added to the input;
  `[B, H, W, C]` in and out."""

  groups: int
  num_heads: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = _group_norm(self.groups, self.dtype, "norm")(x).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      out_kernel_init=nn.initializers.zeros,
      dtype=self.dtype,
      attention_fn=nn.dot_product_attention if self.dtype == jnp.float32 else _attention,
      name="attn",
    )(y)
    return x.astype(self.dtype) + y.reshape(b, h, w, c)


class _Layer(nn.Module):
  """One step of a layer loop: (concat skip), residual block, (attention); carry = output."""

  channels: int
  groups: int
  dropout: float
  attention: bool
  train: bool
  dtype: Any

  @nn.compact
  def __call__(self, h, skip, cond):
    if skip is not None:
      h = jnp.concatenate([h, skip], axis=-1)
    h = ResnetBlock(self.channels, self.groups, self.dropout, self.dtype, name="block")(
      h, cond, self.train
    )
    if self.attention:
      h = AttentionBlock(self.groups, dtype=self.dtype, name="attn")(h)
    return h, h


class UNet(nn.Module):
  """Predicts eps (or x, v) from z_t `[B, H, W, C]` and gamma_t `[B]`; output like z_t.

  Attributes:
    n_layer: residual blocks on the way down; n_layer + 1 on the way up.
    n_embd: channels everywhere.
    norm_groups: GroupNorm groups.
    dropout: dropout rate inside residual blocks (training only).
    fourier_features: append sin/cos(2^n 2 pi z) to the input, n around log2(vocab_size).
    attention_everywhere: self-attention after every residual block.
    gamma_min, gamma_max: range used to normalise gamma for the embedding.
    vocab_size: V of the data, which sets the Fourier frequencies.
    dtype: compute dtype, "float32" or "bfloat16" (parameters and output are float32).
    scan_layers: run the down and up blocks as two `nn.scan` loops over stacked
      parameters (another parameter tree: see `stack_layer_params`).
    remat: recompute each block's activations in the backward pass (`nn.remat`) instead
      of storing them: less memory, about one more forward pass of compute.
  """

  n_layer: int = 4
  n_embd: int = 64
  norm_groups: int = 32
  dropout: float = 0.1
  fourier_features: bool = True
  attention_everywhere: bool = False
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  vocab_size: int = 256  # sets the Fourier frequencies to the data grid
  dtype: Any = "float32"
  scan_layers: bool = False
  remat: bool = False
  num_classes: int = 0  # > 0: class-conditional on batch["label"] (`LabelEmbedding`)
  label_dropout: float = 0.0

  @nn.compact
  def __call__(self, z, gamma, *, train: bool = False, batch=None):
    if z.ndim != 4:
      raise ValueError(f"UNet expects z of shape [B, H, W, C], got {z.shape}.")
    dt = jnp.dtype(self.dtype)
    if dt not in (jnp.float32, jnp.bfloat16):
      raise ValueError(f"UNet dtype must be float32 or bfloat16, got {self.dtype!r}.")
    # float32 until the casts (`denoiser_inputs` says why).
    h, cond = denoiser_inputs(self, z, gamma, width=self.n_embd, batch=batch, train=train)
    h, cond = h.astype(dt), cond.astype(dt)
    h = nn.Conv(self.n_embd, (3, 3), dtype=dt, name="conv_in")(h)
    res_cls = nn.remat(ResnetBlock, static_argnums=(3,)) if self.remat else ResnetBlock
    attn_cls = nn.remat(AttentionBlock) if self.remat else AttentionBlock
    block = lambda name: res_cls(self.n_embd, self.norm_groups, self.dropout, dt, name=name)
    attn = lambda name: attn_cls(self.norm_groups, dtype=dt, name=name)

    def middle(h):  # ResNet, attention, ResNet: the same in both layouts
      h = block("mid0")(h, cond, train)
      h = attn("mid_attn")(h)
      return block("mid1")(h, cond, train)

    if self.scan_layers:
      layer_cls = nn.remat(_Layer, prevent_cse=False) if self.remat else _Layer
      loop = lambda n, name: nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast),
        length=n,
      )(
        self.n_embd, self.norm_groups, self.dropout, self.attention_everywhere, train, dt, name=name
      )
      h_in = h
      h, downs = loop(self.n_layer, "down")(h, None, cond)  # downs: [n_layer, B, H, W, C]
      skips = jnp.concatenate([h_in[None], downs], axis=0)[::-1]  # consumed last first
      h = middle(h)
      h, _ = loop(self.n_layer + 1, "up")(h, skips, cond)
    else:
      skips = [h]
      for i in range(self.n_layer):
        h = block(f"down{i}")(h, cond, train)
        if self.attention_everywhere:
          h = attn(f"down{i}_attn")(h)
        skips.append(h)
      h = middle(h)
      for i in range(self.n_layer + 1):
        h = block(f"up{i}")(jnp.concatenate([h, skips.pop()], axis=-1), cond, train)
        if self.attention_everywhere:
          h = attn(f"up{i}_attn")(h)

    h = nn.swish(_group_norm(self.norm_groups, dt, "norm_out")(h))
    out = nn.Conv(
      z.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, dtype=dt, name="conv_out"
    )(h)
    return out.astype(jnp.float32)


_LAYER_KEY = re.compile(r"(down|up)(\d+)(_attn)?")


def stack_layer_params(params: Mapping, n_layer: int) -> dict:
  """U-Net params of the unrolled layout (`scan_layers=False`) in the scanned layout.

  `down0 ... down{n_layer-1}` become `down/block` with a leading axis of n_layer,
  `down{i}_attn` become `down/attn`, and likewise `up0 ... up{n_layer}` (n_layer + 1
  blocks); every other entry is kept. The values are unchanged, so both layouts compute
  the same function.

  Args:
    params: the U-Net's params (`variables["params"]`, or a VDM's `params["denoiser"]`).
    n_layer: the U-Net's `n_layer`.

  Returns:
    params for the same U-Net with `scan_layers=True`.
  """
  params = dict(params)
  found = sorted(k for k in params if _LAYER_KEY.fullmatch(k))
  expected = [f"down{i}" for i in range(n_layer)] + [f"up{i}" for i in range(n_layer + 1)]
  if not set(expected) <= set(found) or any(
    int(_LAYER_KEY.fullmatch(k)[2]) >= n_layer + (_LAYER_KEY.fullmatch(k)[1] == "up") for k in found
  ):
    raise ValueError(
      f"params do not hold the unrolled blocks of a U-Net with n_layer={n_layer} (expected "
      f"{expected[0]}..{expected[n_layer - 1]} and up0..up{n_layer}); found {found}."
    )
  stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
  for part, n in (("down", n_layer), ("up", n_layer + 1)):
    layer = {"block": stack([params.pop(f"{part}{i}") for i in range(n)])}
    if f"{part}0_attn" in params:
      layer["attn"] = stack([params.pop(f"{part}{i}_attn") for i in range(n)])
    params[part] = layer
  return params


def unstack_layer_params(params: Mapping) -> dict:
  """The inverse of `stack_layer_params`: scanned-layout U-Net params, unrolled.

  n_layer is read from the stacked arrays' leading axis.
  """
  params = dict(params)
  if not isinstance(params.get("down"), Mapping) or "block" not in params["down"]:
    raise ValueError(
      f"params are not in the scanned layout (no down/block); found {sorted(params)}."
    )
  for part in ("down", "up"):
    layer = params.pop(part)
    n = jax.tree.leaves(layer["block"])[0].shape[0]
    for i in range(n):
      params[f"{part}{i}"] = jax.tree.map(lambda x, i=i: x[i], layer["block"])
      if "attn" in layer:
        params[f"{part}{i}_attn"] = jax.tree.map(lambda x, i=i: x[i], layer["attn"])
  return params
