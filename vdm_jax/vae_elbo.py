"""The Gaussian VAE's negative ELBO (the derivation's first model), per example, in nats."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vdm_jax import _checks, gaussian
from vdm_jax.elbo import categorical_nll

__all__ = [
  "vae_elbo",
]


def vae_elbo(
  key: jax.Array,
  k: ArrayLike,
  mean: ArrayLike,
  log_var: ArrayLike,
  decode: Callable[[jax.Array], jax.Array],
  *,
  num_samples: int = 1,
) -> dict[str, jax.Array]:
  r"""The two terms of the Gaussian VAE's negative ELBO, per example, in nats.

  $-\mathrm{ELBO} = \mathbb{E}_{q_\phi(z|x)}[-\log p_\theta(k \mid z)] +
  D_{KL}(q_\phi(z|x) \,\|\, \mathcal{N}(0, I))$ with
  $q_\phi(z|x) = \mathcal{N}(\mu_\phi(x), \mathrm{diag}\,\sigma^2_\phi(x))$ (the derivation's
  Gaussian VAE). The KL is analytic (`gaussian.gaussian_kl`); the reconstruction is the
  Monte Carlo average $\frac1L \sum_{l=1}^L -\log p_\theta(k \mid z^{(l)})$ over
  reparameterised draws $z^{(l)} = \mu_\phi(x) + \sigma_\phi(x) \odot \epsilon^{(l)}$,
  $\epsilon^{(l)} \sim \mathcal{N}(0, I)$ (the derivation writes the sum; the average is the
  unbiased estimate of the expectation). Gradients flow to the encoder through the draws.

  Args:
    key: `jax.random` key of the L draws.
    k: integer data `[B, ...]`, values in {0..V-1}.
    mean: encoder mean `[B, Dz]`.
    log_var: encoder log-variance `[B, Dz]`.
    decode: `z [B, Dz] -> logits [B, ..., V]`, the decoder p_theta(k | z) over V levels.
    num_samples: L >= 1.

  Returns:
    {"recon": `[B]`, "kl": `[B]`} nats.

  Example (a linear decoder over V = 17 levels of 8x8 images, Dz = 2):
    >>> import jax, jax.numpy as jnp
    >>> k = jnp.zeros((3, 8, 8), jnp.int32)
    >>> mean, log_var = jnp.zeros((3, 2)), jnp.zeros((3, 2))  # q(z|x) = N(0, I)
    >>> decode = lambda z: jnp.zeros((z.shape[0], 8, 8, 17)) + z[:, :1, None, None]
    >>> terms = vae_elbo(jax.random.key(0), k, mean, log_var, decode, num_samples=2)
    >>> terms["recon"].tolist()  # equal logits over the 17 levels: 64 log 17 nats
    [181.326, 181.326, 181.326]
    >>> terms["kl"].tolist()  # q(z|x) is the prior
    [0.0, 0.0, 0.0]
  """
  k = _checks.as_int("k", k)
  mean = _checks.as_float("mean", mean)
  log_var = _checks.as_float("log_var", log_var)
  _checks.check_same_shape("mean", mean, "log_var", log_var)
  if mean.ndim != 2 or mean.shape[0] != k.shape[0]:
    raise ValueError(
      f"mean and log_var must be [B, Dz] with B = {k.shape[0]} (from k), got {mean.shape}."
    )
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"`num_samples` (L) must be a positive int, got {num_samples!r}.")
  eps = jax.random.normal(key, (num_samples, *mean.shape), mean.dtype)
  z = mean[None] + jnp.exp(0.5 * log_var)[None] * eps  # [L, B, Dz]
  recon = jnp.mean(jax.vmap(lambda z_l: categorical_nll(k, decode(z_l)))(z), axis=0)
  kl = _checks.sum_except_batch(gaussian.gaussian_kl(mean, jnp.exp(log_var), 0.0, 1.0))
  return {"recon": recon, "kl": kl}
