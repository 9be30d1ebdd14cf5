"""The VDM denoising network: a ResNet U-Net without downsampling.

Every block keeps the input's spatial resolution (the VDM paper found downsampling hurts
likelihood on 32x32 data): `n_layer` residual blocks down, a middle of
ResNet-attention-ResNet, and `n_layer + 1` residual blocks up, each fed the matching
down activation by concatenation. GroupNorm + swish, dropout inside blocks, gamma
conditioning added inside every block, optional Fourier features of z at the input,
optional self-attention after every block, and a zero-initialised output convolution so
training starts from the prediction 0.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vdm_jax.models.embed import GammaEmbedding, fourier_exponents, fourier_features

__all__ = ["AttentionBlock", "ResnetBlock", "UNet"]


class ResnetBlock(nn.Module):
  channels: int
  groups: int
  dropout: float

  @nn.compact
  def __call__(self, x, cond, train: bool):
    h = nn.swish(nn.GroupNorm(self.groups, name="norm0")(x))
    h = nn.Conv(self.channels, (3, 3), name="conv0")(h)
    h = h + nn.Dense(self.channels, name="cond")(cond)[:, None, None, :]
    h = nn.swish(nn.GroupNorm(self.groups, name="norm1")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros, name="conv1")(h)
    if x.shape[-1] != self.channels:
      x = nn.Dense(self.channels, name="skip")(x)
    return x + h


class AttentionBlock(nn.Module):
  groups: int
  num_heads: int = 1

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = nn.GroupNorm(self.groups, name="norm")(x).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads, out_kernel_init=nn.initializers.zeros, name="attn"
    )(y)
    return x + y.reshape(b, h, w, c)


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

  @nn.compact
  def __call__(self, z, gamma, train: bool = False):
    if z.ndim != 4:
      raise ValueError(f"UNet expects z of shape [B, H, W, C], got {z.shape}.")
    cond = GammaEmbedding(self.n_embd, self.gamma_min, self.gamma_max, name="embed")(gamma)
    h = (
      jnp.concatenate([z, fourier_features(z, *fourier_exponents(self.vocab_size))], axis=-1)
      if self.fourier_features
      else z
    )
    h = nn.Conv(self.n_embd, (3, 3), name="conv_in")(h)
    block = lambda name: ResnetBlock(self.n_embd, self.norm_groups, self.dropout, name=name)
    attn = lambda name: AttentionBlock(self.norm_groups, name=name)

    skips = [h]
    for i in range(self.n_layer):
      h = block(f"down{i}")(h, cond, train)
      if self.attention_everywhere:
        h = attn(f"down{i}_attn")(h)
      skips.append(h)

    h = block("mid0")(h, cond, train)
    h = attn("mid_attn")(h)
    h = block("mid1")(h, cond, train)

    for i in range(self.n_layer + 1):
      h = block(f"up{i}")(jnp.concatenate([h, skips.pop()], axis=-1), cond, train)
      if self.attention_everywhere:
        h = attn(f"up{i}_attn")(h)

    h = nn.swish(nn.GroupNorm(self.norm_groups, name="norm_out")(h))
    return nn.Conv(z.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, name="conv_out")(h)
