r"""Gaussian algebra of the diffusion process: q(z_t|x), q(z_s|z_t,x), KL, log density.

Shapes: `x`, `z_t`, `eps` are `[B, ...]` (any number of data axes); a `gamma` is a
scalar or a `[B]` vector and broadcasts over the trailing data axes, or has the data's
shape `[B, ...]`: one gamma per dimension (a multivariate, diagonal process, each
dimension with its own schedule; every formula below is elementwise). Everything is
written through gamma = -log SNR with log-sigmoid and expm1 forms, so it stays finite
in float32 for |gamma| up to ~80 and for s arbitrarily close to t.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from vdm_jax import gaussian
  >>> x = jnp.zeros((4, 8, 8, 1)); eps = jax.random.normal(jax.random.key(0), x.shape)
  >>> z_t = gaussian.q_sample(x, jnp.full((4,), 0.5), eps)  # gamma_t per example: [B]
  >>> mean, var = gaussian.q_posterior(z_t, x, jnp.full((4,), 0.4), jnp.full((4,), 0.5))
  >>> z_t.shape, mean.shape, var.shape
  ((4, 8, 8, 1), (4, 8, 8, 1), (4, 8, 8, 1))
  >>> gamma_map = jnp.linspace(-2.0, 2.0, 256).reshape(x.shape)   # one gamma per dimension
  >>> gaussian.q_sample(x, gamma_map, eps).shape
  (4, 8, 8, 1)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vdm_jax import _checks, schedules

__all__ = ["gaussian_kl", "gaussian_log_prob", "q_posterior", "q_sample"]


def q_sample(x: ArrayLike, gamma_t: ArrayLike, eps: ArrayLike) -> jax.Array:
  r"""Reparameterised sample of q(z_t | x) = N(alpha_t x, sigma_t^2 I).

  $z_t = \alpha_t x + \sigma_t \epsilon$ (the derivation's
  $x_t = \sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t}\,\epsilon$), differentiable in
  x and gamma_t.

  Args:
    x: data, `[B, ...]`, floating.
    gamma_t: scalar, `[B]`, or `[B, ...]` like `x` (one gamma per dimension).
    eps: standard normal noise, same shape as `x`.

  Returns:
    z_t, same shape as `x`.
  """
  x = _checks.as_float("x", x)
  eps = _checks.as_float("eps", eps)
  _checks.check_same_shape("x", x, "eps", eps)
  alpha, sigma = schedules.alpha_sigma(_checks.per_example("gamma_t", gamma_t, x))
  return alpha * x + sigma * eps


def q_posterior(
  z_t: ArrayLike, x: ArrayLike, gamma_s: ArrayLike, gamma_t: ArrayLike
) -> tuple[jax.Array, jax.Array]:
  r"""Mean and variance of q(z_s | z_t, x) for s < t (the derivation's Step 4).

  The derivation writes, with $\bar\alpha$ cumulative and $\alpha_t$ per step,
  $\mu_q = \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1}) x_t + \sqrt{\bar\alpha_{t-1}}(1-\alpha_t) x_0}
  {1-\bar\alpha_t}$ and $\sigma_q^2 = \frac{(1-\alpha_t)(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}$.
  For a continuous schedule with $c = -\mathrm{expm1}(\gamma_s - \gamma_t) =
  \sigma^2_{t|s} / \sigma_t^2 \in (0, 1]$ the same quantities are

  $$\text{mean} = \alpha_s\big((1 - c)\, z_t / \alpha_t + c\, x\big), \qquad
  \text{variance} = c\, \sigma_s^2,$$

  which avoids the cancellations of the ratio form when s is close to t.

  Args:
    z_t: latent at time t, `[B, ...]`.
    x: data (or a prediction of it), same shape as `z_t`.
    gamma_s: scalar, `[B]` or `[B, ...]` (per dimension, like `z_t`), gamma at the
      earlier time s.
    gamma_t: likewise, gamma at t; must exceed gamma_s (in every dimension).

  Returns:
    (mean, variance), both with the shape of `z_t`.
  """
  z_t = _checks.as_float("z_t", z_t)
  x = _checks.as_float("x", x)
  _checks.check_same_shape("z_t", z_t, "x", x)
  g_s = _checks.per_example("gamma_s", gamma_s, z_t, batch_name="z_t")
  g_t = _checks.per_example("gamma_t", gamma_t, z_t, batch_name="z_t")
  log_a2_s, log_s2_s = schedules.log_alpha2_sigma2(g_s)
  log_a2_t, _ = schedules.log_alpha2_sigma2(g_t)
  c = -jnp.expm1(g_s - g_t)
  alpha_s = jnp.exp(0.5 * log_a2_s)
  ratio = jnp.exp(0.5 * (log_a2_s - log_a2_t))  # alpha_s / alpha_t
  mean = ratio * (1.0 - c) * z_t + alpha_s * c * x
  variance = c * jnp.exp(log_s2_s)
  return mean, jnp.broadcast_to(variance, z_t.shape)


def gaussian_kl(
  mean_q: ArrayLike, var_q: ArrayLike, mean_p: ArrayLike, var_p: ArrayLike
) -> jax.Array:
  r"""Elementwise KL(N(mean_q, var_q) || N(mean_p, var_p)) in nats.

  $\frac12\left[\frac{(\mu_q - \mu_p)^2}{\sigma_p^2} + r - 1 - \log r\right]$ with
  $r = \sigma_q^2 / \sigma_p^2$, where $r - 1 - \log r$ is computed as
  `expm1(l) - l`, `l = log var_q - log var_p`, so equal variances give exactly 0.

  Args:
    mean_q: the mean of q; the four arrays broadcast together, floating.
    var_q: the variance of q, > 0.
    mean_p: the mean of p.
    var_p: the variance of p, > 0.

  Returns:
    The elementwise KL, with the broadcast shape of the inputs.

  Example:
    >>> import jax.numpy as jnp
    >>> gaussian_kl(jnp.array([0.0, 1.0]), 1.0, 0.0, 1.0).tolist()
    [0.0, 0.5]
  """
  mean_q = _checks.as_float("mean_q", mean_q)
  var_q = _checks.as_float("var_q", var_q)
  mean_p = _checks.as_float("mean_p", mean_p)
  var_p = _checks.as_float("var_p", var_p)
  log_ratio = jnp.log(var_q) - jnp.log(var_p)
  return 0.5 * (jnp.square(mean_q - mean_p) / var_p + jnp.expm1(log_ratio) - log_ratio)


def gaussian_log_prob(x: ArrayLike, mean: ArrayLike, var: ArrayLike) -> jax.Array:
  """Elementwise log N(x; mean, var) in nats; broadcastable inputs, var > 0.

  Example:
    >>> float(gaussian_log_prob(0.0, 0.0, 1.0))  # -log(2 pi) / 2
    -0.9189
  """
  x = _checks.as_float("x", x)
  mean = _checks.as_float("mean", mean)
  var = _checks.as_float("var", var)
  return -0.5 * (math.log(2.0 * math.pi) + jnp.log(var) + jnp.square(x - mean) / var)
