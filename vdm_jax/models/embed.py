"""Conditioning shared by the denoisers: a sinusoidal embedding of gamma and Fourier features."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
  "GammaEmbedding",
  "LabelEmbedding",
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
