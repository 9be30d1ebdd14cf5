"""The seed's Gaussian VAE as a baseline model, with the same interface as `vdm.VDM`.

Trained by the same trainer and evaluated by the same evaluation command: like `VDM`,
`GaussianVAE` is a frozen dataclass of pure methods over a params pytree
`{"encoder": ..., "decoder": ...}`, and `loss_terms` returns per-example nats, with the
terms "recon" and "kl" of `elbo.vae_elbo` instead of the VDM's three.

Example (the digits VAE of configs/vae_digits.py, smaller; no data files are read):
  >>> import jax, jax.numpy as jnp
  >>> from vdm_jax import data
  >>> from vdm_jax.config import base_config
  >>> config = base_config()
  >>> config.model.kind, config.model.vae_latent_dim, config.model.vae_hidden = "vae", 4, 32
  >>> vae = make_vae(config, data.dataset_info(config.data))
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

import jax
import jax.numpy as jnp

from vdm_jax import elbo
from vdm_jax.models.vae import VAEDecoder, VAEEncoder

__all__ = ["TERMS", "GaussianVAE", "make_vae"]

TERMS = ("recon", "kl")


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
    k,
    key,
    *,
    train: bool = False,
    num_steps: int | None = None,
    t=None,
    t_weight=None,
  ):
    """The VAE's negative-ELBO terms of each example, in nats.

    Args:
      params: model params.
      k: integer data `[B, *data_shape]`.
      key: `jax.random` key of the L reparameterised draws.
      train: unused (no dropout); accepted for the trainer's common interface.
      num_steps, t, t_weight: must be None (or num_steps 0): a VAE has no diffusion time.

    Returns:
      dict with "recon", "kl", "total" (nats, `[B]`) and "bpd" (`[B]`).
    """
    del train
    if num_steps or t is not None or t_weight is not None:
      raise ValueError(
        "A Gaussian VAE has no diffusion time; got "
        f"num_steps={num_steps!r}, t={t!r}, t_weight={t_weight!r}."
      )
    if k.shape[1:] != self.data_shape:
      raise ValueError(f"Data of shape {k.shape} does not match the model's {self.data_shape}.")
    mean, log_var = self.encode(params, k)
    terms = elbo.vae_elbo(
      key, k, mean, log_var, lambda z: self.logits(params, z), num_samples=self.num_samples
    )
    total = terms["recon"] + terms["kl"]
    return {**terms, "total": total, "bpd": elbo.bits_per_dim(total, self.num_dims)}

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


def make_vae(config, info) -> GaussianVAE:
  """Builds the Gaussian VAE of `config.model.vae_*` for data described by `info`."""
  m = config.model
  return GaussianVAE(
    encoder=VAEEncoder(latent_dim=m.vae_latent_dim, hidden=m.vae_hidden, num_layers=m.vae_layers),
    decoder=VAEDecoder(
      data_shape=tuple(info.shape),
      vocab_size=info.vocab_size,
      hidden=m.vae_hidden,
      num_layers=m.vae_layers,
    ),
    vocab_size=info.vocab_size,
    data_shape=tuple(info.shape),
    num_samples=config.loss.vae_num_samples,
  )
