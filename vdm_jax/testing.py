r"""Data distributions whose optimal denoiser and log-density are closed form.

Used to certify that the framework's losses are a correct ELBO independently of any
training: with the Bayes-optimal x_hat(z_t) = E[x | z_t] the continuous-time ELBO of
continuous data equals -log p(x) as gamma_min -> -inf and gamma_max -> +inf.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from vdm_jax import _checks, gaussian, schedules

__all__ = ["GaussianData", "gaussian_decoder_nll"]


@dataclasses.dataclass(frozen=True)
class GaussianData:
  """Data x ~ N(mean, std^2 I), independently in every dimension."""

  mean: float = 0.0
  std: float = 1.0

  def log_prob(self, x):
    """log p(x) summed over non-batch axes: `[B, ...] -> [B]`."""
    x = _checks.as_float("x", x)
    return _checks.sum_except_batch(gaussian.gaussian_log_prob(x, self.mean, self.std**2))

  def x_hat(self, z_t, gamma_t):
    r"""Bayes-optimal E[x | z_t] = mean + alpha s^2 (z_t - alpha mean) / (alpha^2 s^2 + sigma^2).

    Args:
      z_t: `[B, ...]`.
      gamma_t: scalar or `[B]`.
    """
    z_t = _checks.as_float("z_t", z_t)
    alpha, sigma = schedules.alpha_sigma(_checks.per_example("gamma_t", gamma_t, z_t))
    s2 = self.std**2
    return self.mean + alpha * s2 * (z_t - alpha * self.mean) / (alpha**2 * s2 + sigma**2)

  def expected_sq_error(self, x, gamma_t):
    r"""E_eps ||x - x_hat(z_t)||^2 per dimension: (d^2 + rho s^4) / (1 + rho s^2)^2.

    d = x - mean, rho = SNR(t). Shapes broadcast.
    """
    d2 = jnp.square(x - self.mean)
    rho = jnp.exp(-gamma_t)
    s2 = self.std**2
    return (d2 + rho * s2 * s2) / jnp.square(1.0 + rho * s2)

  def continuous_diffusion_loss(self, x, gamma_0: float, gamma_1: float):
    r"""Exact E_{t, eps} of the continuous diffusion loss with the optimal denoiser, per dim.

    $\tfrac12\int_{\rho_1}^{\rho_0} \frac{d^2 + \rho s^4}{(1+\rho s^2)^2} d\rho
    = \frac{1}{2s^2}[(d^2 - s^2)(1/w_1 - 1/w_0) + s^2 \log(w_0/w_1)]$, $w = 1 + \rho s^2$.
    It does not depend on the schedule's shape, only on its endpoints.
    """
    s2 = self.std**2
    d2 = jnp.square(x - self.mean)
    w0 = 1.0 + math.exp(-gamma_0) * s2
    w1 = 1.0 + math.exp(-gamma_1) * s2
    return ((d2 - s2) * (1.0 / w1 - 1.0 / w0) + s2 * math.log(w0 / w1)) / (2.0 * s2)


def gaussian_decoder_nll(x, z_0, gamma_0):
  r"""-log N(x; z_0/alpha_0, sigma_0^2/alpha_0^2), summed to `[B]`: a decoder for continuous data.

  The continuous-data counterpart of `elbo.reconstruction_loss`; its expectation over
  q(z_0 | x) is (log(2 pi) + gamma_0 + 1)/2 per dimension.
  """
  x = _checks.as_float("x", x)
  g0 = _checks.per_example("gamma_0", gamma_0, x)
  log_a2, _ = schedules.log_alpha2_sigma2(g0)
  mean = z_0 * jnp.exp(-0.5 * log_a2)
  return -_checks.sum_except_batch(gaussian.gaussian_log_prob(x, mean, jnp.exp(g0)))
