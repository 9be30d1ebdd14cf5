r"""Data distributions whose optimal denoiser and log-density are closed form.

Used to certify that the framework's losses are a correct ELBO independently of any
training: with the Bayes-optimal x_hat(z_t) = E[x | z_t] the continuous-time ELBO of
continuous data equals -log p(x) as gamma_min -> -inf and gamma_max -> +inf.

Example:
  >>> import jax.numpy as jnp
  >>> data = GaussianData(mean=0.0, std=1.0)
  >>> data.log_prob(jnp.zeros((1, 2))).tolist()                 # 2 x log N(0; 0, 1)
  [-1.8379]
  >>> data.x_hat(jnp.ones((1, 2)), 0.0).tolist()  # SNR 1: E[x | z] = alpha z / (alpha^2 + sigma^2)
  [[0.7071, 0.7071]]
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from vdm_jax import _checks, gaussian, predictions, schedules

__all__ = [
  "GaussianData",
  "GaussianMixture",
  "OracleVDM",
  "PerDimensionSchedule",
  "gaussian_decoder_nll",
]


@dataclasses.dataclass(frozen=True)
class GaussianData:
  """Data x ~ N(mean, std^2 I), independently in every dimension."""

  mean: float = 0.0
  std: float = 1.0

  def log_prob(self, x: ArrayLike) -> jax.Array:
    """log p(x) summed over non-batch axes: `[B, ...] -> [B]`."""
    x = _checks.as_float("x", x)
    return _checks.sum_except_batch(gaussian.gaussian_log_prob(x, self.mean, self.std**2))

  def x_hat(self, z_t: ArrayLike, gamma_t: ArrayLike) -> jax.Array:
    r"""Bayes-optimal E[x | z_t] = mean + alpha s^2 (z_t - alpha mean) / (alpha^2 s^2 + sigma^2).

    Elementwise, so a per-dimension gamma_t (`[B, ...]` like z_t) is exact too: the
    dimensions are independent under the data and the noise.

    Args:
      z_t: `[B, ...]`.
      gamma_t: scalar, `[B]` or `[B, ...]` (per dimension).
    """
    z_t = _checks.as_float("z_t", z_t)
    alpha, sigma = schedules.alpha_sigma(_checks.per_example("gamma_t", gamma_t, z_t))
    s2 = self.std**2
    return self.mean + alpha * s2 * (z_t - alpha * self.mean) / (alpha**2 * s2 + sigma**2)

  def expected_sq_error(self, x: ArrayLike, gamma_t: ArrayLike) -> jax.Array:
    r"""E_eps ||x - x_hat(z_t)||^2 per dimension: (d^2 + rho s^4) / (1 + rho s^2)^2.

    d = x - mean, rho = SNR(t). Shapes broadcast.
    """
    d2 = jnp.square(_checks.as_float("x", x) - self.mean)
    rho = jnp.exp(-_checks.as_float("gamma_t", gamma_t))
    s2 = self.std**2
    return (d2 + rho * s2 * s2) / jnp.square(1.0 + rho * s2)

  def continuous_diffusion_loss(self, x: ArrayLike, gamma_0: float, gamma_1: float) -> jax.Array:
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


def gaussian_decoder_nll(x: ArrayLike, z_0: ArrayLike, gamma_0: ArrayLike) -> jax.Array:
  r"""-log N(x; z_0/alpha_0, sigma_0^2/alpha_0^2), summed to `[B]`: a decoder for continuous data.

  The continuous-data counterpart of `elbo.reconstruction_loss`; its expectation over
  q(z_0 | x) is (log(2 pi) + gamma_0 + 1)/2 per dimension. gamma_0: scalar, `[B]` or
  `[B, ...]` like x (per dimension).
  """
  x = _checks.as_float("x", x)
  g0 = _checks.per_example("gamma_0", gamma_0, x)
  log_a2, _ = schedules.log_alpha2_sigma2(g0)
  mean = z_0 * jnp.exp(-0.5 * log_a2)
  return -_checks.sum_except_batch(gaussian.gaussian_log_prob(x, mean, jnp.exp(g0)))


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  r"""x ~ sum_j w_j N(mu_j, s^2 I) in D dimensions (equal weights by default).

  Attributes:
    means: `[J, D]` component means.
    std: the common isotropic standard deviation s.
  """

  means: np.ndarray
  std: float

  def log_prob(self, x: ArrayLike) -> jax.Array:
    """log p(x) for x `[B, D]` -> `[B]`."""
    return self._log_marginal(_checks.as_float("x", x), 1.0, self.std**2)

  def _log_marginal(self, z: jax.Array, alpha: float, var: float) -> jax.Array:
    """log sum_j (1/J) N(z; alpha mu_j, var I) for z `[B, D]` -> `[B]`."""
    mu = jnp.asarray(self.means, z.dtype)
    d2 = jnp.sum(jnp.square(z[:, None, :] - alpha * mu[None, :, :]), axis=-1)  # [B, J]
    dim = z.shape[-1]
    log_n = -0.5 * (d2 / var + dim * jnp.log(2.0 * math.pi * var))
    return jax.nn.logsumexp(log_n, axis=-1) - math.log(mu.shape[0])

  def x_hat(self, z_t: ArrayLike, gamma_t: ArrayLike) -> jax.Array:
    r"""Bayes-optimal E[x | z_t] for z_t `[B, D]`, gamma_t scalar, `[B]` or `[B, D]`.

    With v = alpha^2 s^2 + sigma^2 the responsibilities are r_j(z) propto
    N(z; alpha mu_j, v I) and E[x | z] = sum_j r_j (mu_j + alpha s^2 (z - alpha mu_j) / v).
    With a per-dimension gamma_t (`[B, D]`: a diagonal process, alpha_d and v_d per
    dimension) z | j ~ N(alpha * mu_j, diag(v)): r_j propto
    exp(-1/2 sum_d (z_d - alpha_d mu_jd)^2 / v_d) (the normalisers, equal for every j,
    cancel) and the conditional mean is the same expression per dimension.
    """
    z_t = _checks.as_float("z_t", z_t)
    alpha, sigma = schedules.alpha_sigma(_checks.per_example("gamma_t", gamma_t, z_t))
    s2 = self.std**2
    var = alpha**2 * s2 + sigma**2  # [], [B, 1] or [B, D]
    mu = jnp.asarray(self.means, z_t.dtype)[None]  # [1, J, D]
    a3 = alpha[:, None, :] if alpha.ndim else alpha  # [], [B, 1, 1] or [B, 1, D]
    v3 = var[:, None, :] if var.ndim else var
    if _checks.is_per_dimension(var, z_t):
      d2 = jnp.sum(jnp.square(z_t[:, None, :] - a3 * mu) / v3, axis=-1)  # [B, J], scaled
      resp = jax.nn.softmax(-0.5 * d2, axis=-1)
    else:
      d2 = jnp.sum(jnp.square(z_t[:, None, :] - a3 * mu), axis=-1)  # [B, J]
      resp = jax.nn.softmax(-0.5 * d2 / var, axis=-1)  # [B, J]; equal variances cancel
    cond_mean = mu + a3 * s2 * (z_t[:, None, :] - a3 * mu) / v3  # [B, J, D]
    return jnp.sum(resp[..., None] * cond_mean, axis=1)


@dataclasses.dataclass(frozen=True, eq=False)
class PerDimensionSchedule:
  r"""A fixed per-dimension schedule: t `[B]` -> gamma `[B, D]`, each dimension its own curve.

  gamma_d(t) = `schedules.square_polynomial_gamma` with (a_d, b_d, c_d) = `coeffs[d]`,
  from gamma_min to gamma_max for every d. With a closed-form denoiser
  (`GaussianMixture.x_hat` with per-dimension gamma) it certifies the per-dimension ELBO.

  Attributes:
    coeffs: `[D, 3]` the (a, b, c) of each dimension.
    gamma_min, gamma_max: the shared end points.

  Example:
    >>> import jax.numpy as jnp
    >>> schedule = PerDimensionSchedule(np.array([[0.0, 0.0, 1.0], [4.0, 0.0, 0.0]]), -5.0, 5.0)
    >>> schedule(jnp.array([0.0, 0.5, 1.0])).tolist()        # [B=3, D=2]: linear, t^5-like
    [[-5.0, -5.0], [0.0, -4.686], [5.0, 5.0]]
  """

  coeffs: np.ndarray
  gamma_min: float = -13.3
  gamma_max: float = 5.0

  def __call__(self, t: ArrayLike) -> jax.Array:
    return self.gamma_and_derivative(t)[0]

  def gamma_and_derivative(self, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """(gamma, gamma') `[B, D]` each, for t `[B]`, in closed form."""
    t = _checks.as_float("t", t)
    if t.ndim != 1:
      raise ValueError(f"PerDimensionSchedule takes t of shape [B], got shape {t.shape}.")
    coeffs = jnp.asarray(self.coeffs, t.dtype)
    return schedules.square_polynomial_gamma(
      coeffs[None], t[:, None], gamma_min=self.gamma_min, gamma_max=self.gamma_max
    )


@dataclasses.dataclass(frozen=True, eq=False)
class OracleVDM:
  """A `vdm_jax.models.VDM` look-alike whose denoiser is a closed-form E[x | z_t].

  Samplers and likelihood evaluators written for a trained VDM accept it unchanged
  (they call `gamma`, `gamma_and_derivative`, `eps_hat`, `x_hat`, `data_shape`,
  `vocab_size`, `num_dims`); `params` is ignored. With a `PerDimensionSchedule` gamma is
  `[B, D]` and the denoiser is the per-dimension Bayes-optimal one.
  """

  schedule: schedules.Schedule
  data: GaussianData | GaussianMixture
  data_shape: tuple[int, ...]
  vocab_size: int = 256

  @property
  def num_dims(self) -> int:
    return math.prod(self.data_shape)

  def gamma(self, params: object, t: ArrayLike) -> jax.Array:
    del params
    return self.schedule(jnp.asarray(t))

  def gamma_and_derivative(self, params: object, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
    del params
    return schedules.gamma_and_derivative(self.schedule, t)

  def x_hat(
    self, params: object, z_t: ArrayLike, gamma_t: ArrayLike, *, batch: dict | None = None
  ) -> jax.Array:
    del params, batch
    return self.data.x_hat(z_t, gamma_t)

  def eps_hat(
    self,
    params: object,
    z_t: ArrayLike,
    gamma_t: ArrayLike,
    *,
    train: bool = False,
    dropout_key: jax.Array | None = None,
    batch: dict | None = None,
  ) -> jax.Array:
    del train, dropout_key, batch

    return predictions.eps_from_x(z_t, self.x_hat(params, z_t, gamma_t), gamma_t)
