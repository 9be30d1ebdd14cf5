r"""Noise schedules: gamma(t) = -log SNR(t) for t in [0, 1].

Conventions (docs/derivation.md, "Notation"): the process is variance preserving,

$$\alpha_t^2 = \mathrm{sigmoid}(-\gamma_t), \quad \sigma_t^2 = \mathrm{sigmoid}(\gamma_t), \quad
\mathrm{SNR}_t = e^{-\gamma_t},$$

so `alpha_t` here is the derivation's $\sqrt{\bar\alpha_t}$. With T steps the derivation's grid
is t_i = i/T, its cumulative $\bar\alpha_i = \alpha^2_{t_i}$ and its per-step
$\alpha_i = \alpha^2_{t_i} / \alpha^2_{t_{i-1}}$ (see `discrete_alphas`).

A schedule is any callable `t -> gamma` that is strictly increasing and
differentiable; the classes below are frozen dataclasses, so they are hashable
and can be closed over by jitted code or passed as static arguments.

Example:
  >>> import jax.numpy as jnp
  >>> from vdm_jax import schedules
  >>> schedule = schedules.LinearSchedule(gamma_min=-13.3, gamma_max=5.0)
  >>> gamma, dgamma_dt = schedules.gamma_and_derivative(schedule, jnp.array([0.0, 0.5, 1.0]))
  >>> gamma.tolist(), dgamma_dt.tolist()
  ([-13.3, -4.15, 5.0], [18.3, 18.3, 18.3])
  >>> alpha, sigma = schedules.alpha_sigma(gamma)
  >>> (alpha**2 + sigma**2).tolist()
  [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from vdm_jax import _checks

Schedule = Callable[[jax.Array], jax.Array]
"""A noise schedule: times t (any shape) -> gamma(t) = -log SNR(t), same shape."""

__all__ = [
  "CosineSchedule",
  "DDPMLinearSchedule",
  "LinearSchedule",
  "Schedule",
  "alpha_sigma",
  "discrete_alphas",
  "gamma_and_derivative",
  "log_alpha2_sigma2",
  "snr",
  "square_polynomial_gamma",
]


def _check_range(gamma_min: float, gamma_max: float) -> None:
  if not (math.isfinite(gamma_min) and math.isfinite(gamma_max) and gamma_min < gamma_max):
    raise ValueError(
      f"Need finite gamma_min < gamma_max, got gamma_min={gamma_min}, gamma_max={gamma_max}."
    )


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
  r"""gamma(t) = gamma_min + (gamma_max - gamma_min) t (the VDM paper's fixed schedule).

  Attributes:
    gamma_min: gamma(0) = -log SNR at the data end; -13.3 gives SNR(0) ~ 6e5.
    gamma_max: gamma(1); 5.0 gives alpha_1^2 = sigmoid(-5) ~ 0.0067.
  """

  gamma_min: float = -13.3
  gamma_max: float = 5.0

  def __post_init__(self) -> None:
    _check_range(self.gamma_min, self.gamma_max)

  def __call__(self, t: ArrayLike) -> jax.Array:
    """gamma(t) for times `t` in [0, 1] of any shape; the same shape."""
    t = _checks.as_float("t", t)
    return self.gamma_min + (self.gamma_max - self.gamma_min) * t


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
  r"""The improved-DDPM cosine schedule as a continuous gamma(t), truncated to a finite range.

  Nichol & Dhariwal define $\bar\alpha(u) = f(u)/f(0)$ with
  $f(u) = \cos^2(\frac{u + s}{1 + s}\frac{\pi}{2})$, which runs from gamma = -inf at u = 0
  to +inf at u = 1. Here u is restricted to [u_min, u_max] with gamma(u_min) = gamma_min
  and gamma(u_max) = gamma_max, and t in [0, 1] maps linearly onto it:

  $$\gamma(t) = \log(1/\bar\alpha(u) - 1), \quad u = u_{min} + (u_{max} - u_{min})\, t.$$

  Unlike clipping gamma, this keeps gamma strictly increasing and smooth on all of
  [0, 1] with exactly the requested endpoints. It is evaluated through
  $\cos^2 a - \cos^2 b = \sin(b - a)\sin(b + a)$, so no `log(1 - x)` of a near-1 value
  appears at either end.

  Attributes:
    gamma_min: gamma(0).
    gamma_max: gamma(1).
    s: the offset of improved DDPM (0.008).
  """

  gamma_min: float = -13.3
  gamma_max: float = 5.0
  s: float = 0.008

  def __post_init__(self) -> None:
    _check_range(self.gamma_min, self.gamma_max)
    if not 0.0 <= self.s < 1.0:
      raise ValueError(f"CosineSchedule offset s must be in [0, 1), got s={self.s}.")

  def _u(self, gamma: float) -> float:
    """Inverse of the untruncated schedule, in float64: u such that gamma(u) = gamma."""
    c = math.pi / (2.0 * (1.0 + self.s))
    phi0 = c * self.s
    abar = 1.0 / (1.0 + math.exp(gamma))
    phi = math.acos(math.sqrt(abar) * math.cos(phi0))
    return phi / c - self.s

  def __call__(self, t: ArrayLike) -> jax.Array:
    """gamma(t) for times `t` in [0, 1] of any shape; the same shape."""
    t = _checks.as_float("t", t)
    c = math.pi / (2.0 * (1.0 + self.s))
    phi0 = c * self.s
    u_min, u_max = self._u(self.gamma_min), self._u(self.gamma_max)
    u = u_min + (u_max - u_min) * t  # in (0, 1)
    one_minus_u = (1.0 - u_max) + (u_max - u_min) * (1.0 - t)
    # abar = cos^2(phi) / cos^2(phi0), phi = c (u + s);  1/abar - 1 =
    # sin(phi - phi0) sin(phi + phi0) / cos^2(phi), with phi - phi0 = c u and
    # cos(phi) = sin(pi/2 - phi) = sin(c (1 - u)).
    return (
      jnp.log(jnp.sin(c * u))
      + jnp.log(jnp.sin(c * u + 2.0 * phi0))
      - 2.0 * jnp.log(jnp.sin(c * one_minus_u))
    )


@dataclasses.dataclass(frozen=True)
class DDPMLinearSchedule:
  r"""DDPM's discrete linear-beta schedule as a continuous gamma(t).

  DDPM (Ho et al.) uses $\beta_j$ linear from `beta_start` to `beta_end` over
  j = 1..T and $\bar\alpha_i = \prod_{j \le i} (1 - \beta_j)$. This schedule satisfies
  $\mathrm{sigmoid}(-\gamma(i/T)) = \bar\alpha_i$ exactly (to float32) at every grid
  point i = 1..T, and interpolates gamma linearly between grid points. DDPM's chain
  starts from the clean data ($\bar\alpha_0 = 1$, gamma = -inf), which a VDM cannot
  decode from, so on [0, 1/T] the first segment is extended: gamma(0) = 2 gamma(1/T) -
  gamma(2/T) (about -10.0 for the default betas).

  The grid values are computed once in float64 as
  gamma_i = log(-expm1(L_i)) - L_i with L_i = sum_j log1p(-beta_j).

  Attributes:
    beta_start: beta_1.
    beta_end: beta_T.
    num_steps: T, at least 2.
  """

  beta_start: float = 1e-4
  beta_end: float = 0.02
  num_steps: int = 1000

  def __post_init__(self) -> None:
    if not isinstance(self.num_steps, int) or self.num_steps < 2:
      raise ValueError(f"DDPMLinearSchedule needs num_steps >= 2, got {self.num_steps!r}.")
    if not 0.0 < self.beta_start <= self.beta_end < 1.0:
      raise ValueError(
        "DDPMLinearSchedule needs 0 < beta_start <= beta_end < 1, got "
        f"beta_start={self.beta_start}, beta_end={self.beta_end}."
      )

  def betas(self) -> np.ndarray:
    """DDPM's beta_1..beta_T, float64, shape [T]."""
    return np.linspace(self.beta_start, self.beta_end, self.num_steps, dtype=np.float64)

  def grid_gammas(self) -> np.ndarray:
    """gamma at t = i/T for i = 0..T (i = 0 extrapolated), float64, shape [T + 1]."""
    log_abar = np.cumsum(np.log1p(-self.betas()))
    g = np.log(-np.expm1(log_abar)) - log_abar
    return np.concatenate([[2.0 * g[0] - g[1]], g])

  def __call__(self, t: ArrayLike) -> jax.Array:
    """gamma(t) for times `t` in [0, 1] of any shape; the same shape."""
    t = _checks.as_float("t", t)
    grid = jnp.asarray(self.grid_gammas(), dtype=t.dtype)
    num_steps = self.num_steps
    u = t * num_steps
    i = jnp.clip(jnp.floor(u), 0, num_steps - 1)
    idx = i.astype(jnp.int32)
    g0, g1 = grid[idx], grid[idx + 1]
    return g0 + (u - i) * (g1 - g0)


def gamma_and_derivative(schedule: Schedule, t: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """gamma(t) and d gamma / dt, elementwise, through one forward-mode pass.

  Args:
    schedule: a callable `t -> gamma`, applied elementwise.
    t: times, any shape.

  Returns:
    (gamma, dgamma_dt), each with the shape of `t`.

  Example:
    >>> import jax.numpy as jnp
    >>> gamma, dgamma_dt = gamma_and_derivative(CosineSchedule(), jnp.array([0.0, 1.0]))
    >>> gamma.tolist()
    [-13.3, 5.0]
  """
  t = _checks.as_float("t", t)
  return jax.jvp(schedule, (t,), (jnp.ones_like(t),))


def log_alpha2_sigma2(gamma: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """(log alpha^2, log sigma^2) = (log_sigmoid(-gamma), log_sigmoid(gamma)); stable for any gamma.

  Args:
    gamma: -log SNR, any shape.

  Returns:
    (log alpha^2, log sigma^2), each with the shape of `gamma`.

  Example:
    >>> import jax.numpy as jnp
    >>> log_a2, log_s2 = log_alpha2_sigma2(jnp.array([0.0, 100.0]))
    >>> log_a2.tolist(), log_s2.tolist()
    ([-0.6931, -100.0], [-0.6931, 0.0])
  """
  gamma = _checks.as_float("gamma", gamma)
  return jax.nn.log_sigmoid(-gamma), jax.nn.log_sigmoid(gamma)


def alpha_sigma(gamma: ArrayLike) -> tuple[jax.Array, jax.Array]:
  r"""alpha = sqrt(sigmoid(-gamma)), sigma = sqrt(sigmoid(gamma)).

  `alpha` is VDM's alpha_t, i.e. the derivation's $\sqrt{\bar\alpha_t}$; alpha^2 + sigma^2 = 1.
  Computed from log-sigmoids so both stay accurate (and positive) for |gamma| up to
  ~80 in float32.

  Args:
    gamma: -log SNR, any shape.

  Returns:
    (alpha, sigma), each with the shape of `gamma`.

  Example:
    >>> import jax.numpy as jnp
    >>> alpha, sigma = alpha_sigma(jnp.array([0.0]))
    >>> alpha.tolist(), sigma.tolist()
    ([0.7071], [0.7071])
  """
  log_a2, log_s2 = log_alpha2_sigma2(gamma)
  return jnp.exp(0.5 * log_a2), jnp.exp(0.5 * log_s2)


def snr(gamma: ArrayLike) -> jax.Array:
  """Signal-to-noise ratio alpha^2 / sigma^2 = exp(-gamma), with the shape of `gamma`.

  Example:
    >>> import math
    >>> import jax.numpy as jnp
    >>> snr(jnp.array([0.0, math.log(4.0)])).tolist()
    [1.0, 0.25]
  """
  return jnp.exp(-_checks.as_float("gamma", gamma))


def discrete_alphas(schedule: Schedule, num_steps: int) -> tuple[jax.Array, jax.Array]:
  r"""The derivation's per-step $\alpha_i$ and cumulative $\bar\alpha_i$ for i = 1..T.

  With t_i = i/T:  $\bar\alpha_i = \alpha^2_{t_i} = \mathrm{sigmoid}(-\gamma(t_i))$ and
  $\alpha_i = \bar\alpha_i / \bar\alpha_{i-1}$, so that the derivation's
  q(x_i | x_{i-1}) = N(sqrt(alpha_i) x_{i-1}, (1 - alpha_i) I) composes to
  q(x_i | x_0) = N(sqrt(abar_i) x_0, (1 - abar_i) I). The VDM's z_0 is already slightly
  noisy (gamma(0) is finite), so $\bar\alpha_0 = \alpha^2_0 < 1$ and
  $\prod_{j \le i} \alpha_j = \bar\alpha_i / \bar\alpha_0$.

  Args:
    schedule: callable `t -> gamma`.
    num_steps: T >= 1.

  Returns:
    (alpha, alpha_bar), float32 arrays of shape [T].

  Example:
    >>> alpha, alpha_bar = discrete_alphas(LinearSchedule(), 4)
    >>> alpha.shape, alpha_bar.tolist()
    ((4,), [0.9998, 0.9845, 0.3953, 0.0067])
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=False)
  t = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
  log_abar, _ = log_alpha2_sigma2(schedule(t))
  return jnp.exp(log_abar[1:] - log_abar[:-1]), jnp.exp(log_abar[1:])


def square_polynomial_gamma(
  coeffs: ArrayLike,
  t: ArrayLike,
  *,
  gamma_min: float,
  gamma_max: float,
  floor: float = 1e-3,
) -> tuple[jax.Array, jax.Array]:
  r"""A monotone schedule with fixed end points whose derivative is a square, and gamma'.

  With $p(u) = a u^2 + b u + c$ (one (a, b, c) per dimension, e.g. from a network) and
  $P(t) = \int_0^t (p(u)^2 + \varepsilon)\,du$ (closed form, a polynomial of degree 5),

    gamma(t) = gamma_min + (gamma_max - gamma_min) P(t) / P(1),
    gamma'(t) = (gamma_max - gamma_min) (p(t)^2 + eps) / P(1) > 0,

  so gamma is strictly increasing from gamma(0) = gamma_min to gamma(1) = gamma_max for
  any coefficients (the multivariate schedule of MuLAN, Sahoo et al. 2024). `floor` is
  eps: it keeps gamma' > 0 where p vanishes and absorbs the rounding of P's terms.

  Args:
    coeffs: `[..., 3]`, (a, b, c) along the last axis.
    t: times in [0, 1], broadcastable against `coeffs.shape[:-1]`.
    gamma_min: gamma at t = 0.
    gamma_max: gamma at t = 1, gamma_min < gamma_max.
    floor: eps > 0.

  Returns:
    (gamma, dgamma_dt), each of the broadcast shape of t and `coeffs.shape[:-1]`.

  Example: (a, b, c) = (0, 0, 1) is the linear schedule; other rows bend it, same ends.
    >>> import jax.numpy as jnp
    >>> coeffs = jnp.array([[0.0, 0.0, 1.0], [3.0, -1.0, 0.5]])            # two dimensions
    >>> gamma, _ = square_polynomial_gamma(
    ...   coeffs, jnp.array([[0.0], [0.5], [1.0]]), gamma_min=-10.0, gamma_max=5.0
    ... )
    >>> gamma.tolist()                                             # [t, dimension]
    [[-10.0, -10.0], [-2.5, -8.595], [5.0, 5.0]]
  """
  _check_range(gamma_min, gamma_max)
  if not (isinstance(floor, int | float) and floor > 0):
    raise ValueError(f"`floor` must be a positive number, got {floor!r}.")
  coeffs = _checks.as_float("coeffs", coeffs)
  if coeffs.ndim < 1 or coeffs.shape[-1] != 3:
    raise ValueError(
      f"`coeffs` must hold (a, b, c) along its last axis, shape [..., 3]; got {coeffs.shape}."
    )
  t = _checks.as_float("t", t)
  shape = jnp.broadcast_shapes(t.shape, coeffs.shape[:-1])
  t = jnp.broadcast_to(t, shape)
  a, b, c = (jnp.broadcast_to(coeffs[..., i], shape) for i in range(3))

  def integral(u):  # int_0^u p^2 + eps, by Horner's rule in u
    inner = (
      c * c
      + floor
      + u * (b * c + u * ((b * b + 2.0 * a * c) / 3.0 + u * (a * b / 2.0 + u * (a * a / 5.0))))
    )
    return u * inner

  total = integral(jnp.ones((), t.dtype))
  span = gamma_max - gamma_min
  poly = c + t * (b + t * a)
  gamma = gamma_min + span * (integral(t) / total)
  dgamma = span * (jnp.square(poly) + floor) / total
  return gamma, dgamma
