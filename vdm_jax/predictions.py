"""Conversions between predictions of x, epsilon and v (docs/derivation.md, "Notation").

With z_t = alpha_t x + sigma_t eps (alpha_t^2 = sigmoid(-gamma_t), sigma_t^2 =
sigmoid(gamma_t)) any one of x, eps and v = alpha_t eps - sigma_t x determines the other
two given z_t; a network may predict any of them and the ELBO stays the same objective.
Every gamma_t is a scalar, `[B]`, or `[B, ...]` like the data (one per dimension).
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from vdm_jax import _checks, schedules

__all__ = [
  "PARAMETERIZATIONS",
  "eps_from_v",
  "eps_from_x",
  "prediction_to_eps",
  "v_from_x_eps",
  "x_from_eps",
  "x_from_v",
]


def _coefs(gamma_t, base, base_name, other, other_name):
  """Checks a conversion's inputs; returns (alpha_t, sigma_t, base, other) broadcastable."""
  base = _checks.as_float(base_name, base)
  other = _checks.as_float(other_name, other)
  _checks.check_batched(base_name, base)
  _checks.check_same_shape(base_name, base, other_name, other)
  g = _checks.per_example("gamma_t", gamma_t, base, batch_name=base_name)
  return (*schedules.alpha_sigma(g), base, other)


def x_from_eps(z_t: ArrayLike, eps_hat: ArrayLike, gamma_t: ArrayLike) -> jax.Array:
  r"""$\hat x = (z_t - \sigma_t \hat\epsilon)/\alpha_t$. Shapes `[B, ...]`; gamma scalar or `[B]`."""
  alpha, sigma, z_t, eps_hat = _coefs(gamma_t, z_t, "z_t", eps_hat, "eps_hat")
  return (z_t - sigma * eps_hat) / alpha


def eps_from_x(z_t: ArrayLike, x_hat: ArrayLike, gamma_t: ArrayLike) -> jax.Array:
  r"""$\hat\epsilon = (z_t - \alpha_t \hat x)/\sigma_t$. Shapes `[B, ...]`; gamma scalar or `[B]`."""
  alpha, sigma, z_t, x_hat = _coefs(gamma_t, z_t, "z_t", x_hat, "x_hat")
  return (z_t - alpha * x_hat) / sigma


def v_from_x_eps(x: ArrayLike, eps: ArrayLike, gamma_t: ArrayLike) -> jax.Array:
  r"""The v target $v = \alpha_t \epsilon - \sigma_t x$. Shapes `[B, ...]`."""
  alpha, sigma, x, eps = _coefs(gamma_t, x, "x", eps, "eps")
  return alpha * eps - sigma * x


def x_from_v(z_t: ArrayLike, v_hat: ArrayLike, gamma_t: ArrayLike) -> jax.Array:
  r"""$\hat x = \alpha_t z_t - \sigma_t \hat v$ (since alpha^2 + sigma^2 = 1)."""
  alpha, sigma, z_t, v_hat = _coefs(gamma_t, z_t, "z_t", v_hat, "v_hat")
  return alpha * z_t - sigma * v_hat


def eps_from_v(z_t: ArrayLike, v_hat: ArrayLike, gamma_t: ArrayLike) -> jax.Array:
  r"""$\hat\epsilon = \sigma_t z_t + \alpha_t \hat v$."""
  alpha, sigma, z_t, v_hat = _coefs(gamma_t, z_t, "z_t", v_hat, "v_hat")
  return sigma * z_t + alpha * v_hat


_TO_EPS = {
  "eps": lambda z_t, out, gamma_t: out,
  "x": eps_from_x,
  "v": eps_from_v,
}


PARAMETERIZATIONS = tuple(_TO_EPS)  # ("eps", "x", "v"): what a network may predict
"""What a network may predict: "eps", "x" or "v"."""


def prediction_to_eps(
  prediction: ArrayLike, z_t: ArrayLike, gamma_t: ArrayLike, *, parameterization: str
) -> jax.Array:
  """Converts a network output to an epsilon prediction.

  Args:
    prediction: network output `[B, ...]`.
    z_t: the network's input latent, same shape.
    gamma_t: scalar, `[B]` or `[B, ...]` (per dimension, like `z_t`).
    parameterization: what the network predicts: "eps", "x" or "v".

  Returns:
    eps_hat, same shape as `z_t`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x, eps, gamma_t = jnp.full((2, 3), 0.5), jnp.ones((2, 3)), jnp.array([-1.0, 1.0])
    >>> from vdm_jax import gaussian
    >>> z_t = gaussian.q_sample(x, gamma_t, eps)
    >>> v = v_from_x_eps(x, eps, gamma_t)
    >>> bool(jnp.allclose(prediction_to_eps(v, z_t, gamma_t, parameterization="v"), eps))
    True
  """
  if parameterization not in _TO_EPS:
    raise ValueError(
      f"Unknown parameterization {parameterization!r}; choose one of {sorted(_TO_EPS)}."
    )
  return _TO_EPS[parameterization](z_t, prediction, gamma_t)
