"""The Gaussian VAE of the seed's first part: MLP encoder and categorical decoder."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp

__all__ = ["VAEDecoder", "VAEEncoder"]


class VAEEncoder(nn.Module):
  """q_phi(z | x) = N(mean, diag exp(log_var)) from data x `[B, ...]` in (-1, 1).

  Returns (mean `[B, latent_dim]`, log_var `[B, latent_dim]`).
  """

  latent_dim: int = 16
  hidden: int = 256
  num_layers: int = 2

  @nn.compact
  def __call__(self, x):
    h = x.reshape((x.shape[0], -1))
    for i in range(self.num_layers):
      h = nn.swish(nn.Dense(self.hidden, name=f"dense{i}")(h))
    mean = nn.Dense(self.latent_dim, name="mean")(h)
    # Zero-initialised: every posterior starts as N(mean, I), a KL of 0 in its variances.
    log_var = nn.Dense(self.latent_dim, kernel_init=nn.initializers.zeros, name="log_var")(h)
    return mean, log_var


class VAEDecoder(nn.Module):
  """p_theta(k | z): independent categoricals over the V levels of every data dimension.

  Returns logits `[B, *data_shape, V]` from z `[B, latent_dim]`. A categorical (not a
  Gaussian, the "MSE" the seed asks about) makes the ELBO a bound on the same discrete
  likelihood as the VDM's, so the two bits/dim compare.
  """

  data_shape: tuple[int, ...]
  vocab_size: int
  hidden: int = 256
  num_layers: int = 2

  @nn.compact
  def __call__(self, z):
    h = z
    for i in range(self.num_layers):
      h = nn.swish(nn.Dense(self.hidden, name=f"dense{i}")(h))
    logits = nn.Dense(math.prod(self.data_shape) * self.vocab_size, name="logits")(h)
    return jnp.reshape(logits, (z.shape[0], *self.data_shape, self.vocab_size))
