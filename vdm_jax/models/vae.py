"""The derivation's Gaussian VAE (MLP encoder, categorical decoder) as a baseline model, implementing the `Model` interface like `VDM`.

Trained by the same trainer and evaluated by the same evaluation command: like `VDM`,
`GaussianVAE` is a frozen dataclass of pure methods over a params pytree
`{"encoder": ..., "decoder": ...}`, and `loss_terms` returns per-example nats, with the
terms "recon" and "kl" of `vae_elbo.vae_elbo` instead of the VDM's three.

Example (the digits VAE of configs/vae_digits.py, smaller; no data files are read):
  >>> import jax, jax.numpy as jnp
  >>> from vdm_jax import data, models
  >>> from vdm_jax.config import base_config
  >>> config = base_config()
  >>> config.model.kind, config.model.vae_latent_dim, config.model.vae_hidden = "vae", 4, 32
  >>> vae = models.make_model(config, data.dataset_info(config.data))
  >>> params = vae.init(jax.random.key(0))
  >>> k = jnp.zeros((3, *vae.data_shape), jnp.int32)            # integer images [B, 8, 8, 1]
  >>> terms = vae.loss_terms(params, k, jax.random.key(1))
  >>> sorted(terms), terms["total"].shape                       # nats (bpd: bits/dim), [B]
  (['bpd', 'kl', 'recon', 'total'], (3,))
  >>> vae.sample(params, jax.random.key(2), 5).shape
  (5, 8, 8, 1)
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax import elbo, vae_elbo
from vdm_jax.models.interface import as_batch, with_total

__all__ = ["TERMS", "GaussianVAE", "VAEDecoder", "VAEEncoder"]


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
  Gaussian, the "MSE" the derivation asks about) makes the ELBO a bound on the same discrete
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


TERMS = ("recon", "kl")
"""The names of the VAE's loss terms, in nats per example: they sum to the -ELBO."""


@dataclasses.dataclass(frozen=True)
class GaussianVAE:
  """q(z|x) = N(mu(x), diag sigma^2(x)), p(z) = N(0, I), p(k|z) categorical over V levels.

  Attributes:
    encoder: `VAEEncoder`.
    decoder: `VAEDecoder`.
    vocab_size: V.
    data_shape: per-example shape, e.g. (8, 8, 1).
    num_samples: L, Monte Carlo draws of z per example for the reconstruction term.
  """

  encoder: VAEEncoder
  decoder: VAEDecoder
  vocab_size: int
  data_shape: tuple[int, ...]
  num_samples: int = 1
  diffusion_time = False  # no t: the Model interface's flag (class constant, not a field)

  @property
  def terms(self) -> tuple[str, ...]:
    """Names of the per-example loss terms that sum to "total"."""
    return TERMS

  @property
  def num_dims(self) -> int:
    return math.prod(self.data_shape)

  def init(self, key):
    """Returns freshly initialised params `{"encoder": ..., "decoder": ...}`."""
    key_e, key_d = jax.random.split(key)
    x = jnp.zeros((1, *self.data_shape), jnp.float32)
    z = jnp.zeros((1, self.encoder.latent_dim), jnp.float32)
    return {
      "encoder": self.encoder.init(key_e, x)["params"],
      "decoder": self.decoder.init(key_d, z)["params"],
    }

  def encode(self, params, k):
    """(mean, log_var) `[B, latent_dim]` of q(z | x) for integer data k `[B, ...]`."""
    return self.encoder.apply({"params": params["encoder"]}, elbo.encode(k, self.vocab_size))

  def logits(self, params, z):
    """Decoder logits `[B, *data_shape, V]` of p(k | z) for z `[B, latent_dim]`."""
    return self.decoder.apply({"params": params["decoder"]}, z)

  def loss_terms(
    self,
    params,
    batch,
    key,
    *,
    train: bool = False,
  ):
    """The VAE's negative-ELBO terms of each example, in nats.

    Args:
      params: model params.
      batch: {"image": integer data `[B, *data_shape]`, ...} (other fields unused), or
        that integer array.
      key: `jax.random` key of the L reparameterised draws.
      train: unused (the networks have no dropout).

    Returns:
      dict with "recon", "kl", "total" (nats, `[B]`) and "bpd" (`[B]`).
    """
    del train
    k = as_batch(batch, self.data_shape)["image"]
    mean, log_var = self.encode(params, k)
    terms = vae_elbo.vae_elbo(
      key, k, mean, log_var, lambda z: self.logits(params, z), num_samples=self.num_samples
    )
    return with_total({"recon": terms["recon"], "kl": terms["kl"]}, self.num_dims)

  def sample(self, params, key, num_samples: int, *, decode: str = "sample"):
    """Ancestral samples: z ~ N(0, I), then k ~ p(k | z) ("sample") or its argmax ("mode").

    Returns:
      int32 `[num_samples, *data_shape]`.
    """
    key_z, key_k = jax.random.split(key)
    logits = self.logits(params, jax.random.normal(key_z, (num_samples, self.encoder.latent_dim)))
    if decode == "mode":
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if decode != "sample":
      raise ValueError(f"Unknown decode {decode!r}; choose 'sample' or 'mode'.")
    return jax.random.categorical(key_k, logits).astype(jnp.int32)
