"""Conditioning shared by the denoisers: a sinusoidal embedding of gamma and Fourier features."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
  "GammaEmbedding",
  "LabelEmbedding",
  "denoiser_inputs",
  "fourier_exponents",
  "fourier_features",
  "timestep_embedding",
]


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
  """Sinusoidal embedding of a scalar per example: `[B] -> [B, dim]`.

  Args:
    t: `[B]`, typically the normalised gamma in [0, 1] scaled by 1000.
    dim: an even embedding size.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t[:, None].astype(jnp.float32) * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def fourier_exponents(vocab_size: int) -> tuple[int, int]:
  """(first, last) exponents whose frequencies 2^n cycles per unit bracket the data grid.

  The bin centres of V levels are 2/V apart, i.e. V/2 cycles per unit; for V = 256 this
  gives n in [6, 8), the VDM paper's choice, and for V = 17 n in [2, 4).
  """
  top = max(int(math.floor(math.log2(vocab_size))), 2)
  return top - 2, top


def fourier_features(z, first: int = 6, last: int = 8):
  """sin/cos(2^n 2 pi z) for n in [first, last): channels `C -> 2 C (last - first)`.

  High frequencies of z let the network resolve the fine structure of nearly clean
  latents (the VDM paper's Fourier features), which matters for likelihood: a nearly
  clean z_t identifies its bin, hence x and eps exactly.
  """
  freqs = 2.0 ** jnp.arange(first, last, dtype=jnp.float32) * 2.0 * math.pi
  h = z[..., None] * freqs.reshape((1,) * z.ndim + (-1,))  # [..., C, F]
  h = h.reshape(z.shape[:-1] + (-1,))
  return jnp.concatenate([jnp.sin(h), jnp.cos(h)], axis=-1)


class GammaEmbedding(nn.Module):
  """gamma_t -> conditioning vector: normalise to [0, 1], sinusoid, 2-layer MLP."""

  dim: int
  gamma_min: float
  gamma_max: float

  @nn.compact
  def __call__(self, gamma):
    t = (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
    h = timestep_embedding(1000.0 * t, self.dim)
    h = nn.swish(nn.Dense(4 * self.dim, name="dense0")(h))
    return nn.swish(nn.Dense(4 * self.dim, name="dense1")(h))


class LabelEmbedding(nn.Module):
  """The batch's "label" -> a learned vector `[B, dim]`, added to the conditioning vector.

  Labels are in {0, ..., C - 1}; index C is the learned null label, used where the batch
  has no "label" (unconditional use) and, in training, in place of each example's label
  with probability `dropout` (drawn from the "dropout" RNG), so that one network learns
  both eps_hat(z, y) and eps_hat(z, null) for classifier-free guidance.
  """

  num_classes: int
  dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, batch, batch_size: int, *, train: bool = False):
    null = jnp.full((batch_size,), self.num_classes, jnp.int32)
    label = null if batch is None or "label" not in batch else jnp.asarray(batch["label"])
    if label.shape != (batch_size,) or not jnp.issubdtype(label.dtype, jnp.integer):
      raise ValueError(
        f"batch['label'] must be integers of shape ({batch_size},), got shape {label.shape} "
        f"and dtype {label.dtype}."
      )
    if train and self.dropout > 0.0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.dropout, (batch_size,))
      label = jnp.where(drop, self.num_classes, label)
    return nn.Embed(self.num_classes + 1, self.dim, name="embed")(label)


def denoiser_inputs(module: nn.Module, z, gamma, *, width: int, batch, train: bool):
  """The float32 input and conditioning a denoiser starts from; call it inside the
  denoiser's `nn.compact` `__call__` (its submodules "embed" and "label_embed" are the
  denoiser's own).

  Args:
    module: the denoiser, with the attributes `gamma_min`, `gamma_max`, `vocab_size`,
      `fourier_features`, `num_classes` and `label_dropout` (as `UNet`, `MLPDenoiser`).
    z: `[B, ...]` the noisy data.
    gamma: `[B]`.
    width: the gamma embedding's size (before its MLP widens it 4x).
    batch: the data batch's dict (its "label" when `num_classes` > 0), or None.
    train: whether labels are dropped at the rate `label_dropout`.

  Returns:
    (h, cond): `h` `[B, ..., C']` z with its Fourier features appended on the last axis
    when `fourier_features` (C' = C (1 + 2 F)), else z; `cond` `[B, 4 width]` the gamma
    embedding plus the label embedding when `num_classes` > 0. Both float32: the sinusoid
    of gamma and Fourier frequencies up to 2^7 2 pi, whose phases bfloat16 (8 bits of
    mantissa) would not resolve; cast them to the compute dtype after.
  """
  z = z.astype(jnp.float32)
  cond = GammaEmbedding(width, module.gamma_min, module.gamma_max, name="embed")(gamma)
  if module.num_classes:
    cond = cond + LabelEmbedding(
      module.num_classes, cond.shape[-1], module.label_dropout, name="label_embed"
    )(batch, z.shape[0], train=train)
  if module.fourier_features:
    z = jnp.concatenate([z, fourier_features(z, *fourier_exponents(module.vocab_size))], axis=-1)
  return z, cond
