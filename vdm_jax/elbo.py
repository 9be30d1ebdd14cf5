r"""The three terms of the VDM evidence lower bound, per example, in nats.

$-\log p(x) \le \mathcal{L}_{recon} + \mathcal{L}_{prior} + \mathcal{L}_{diffusion}$ (the
seed's ELBO in its denoising-matching form, docs/derivation.md):

* reconstruction: $-\log p(k \mid z_0)$ with an exact factorised discrete decoder;
* prior matching: $D_{KL}(q(z_1 \mid x) \,\|\, N(0, I))$;
* denoising matching: $\sum_{i=1}^T D_{KL}(q(z_s \mid z_t, x) \| p_\theta(z_s \mid z_t))$,
  $s = (i-1)/T$, $t = i/T$, estimated with one random $i$, or its T -> infinity limit.

Every term returns shape `[B]`, summed over all non-batch axes. Data are integers
k in {0..V-1} mapped to bin centres x = (2k + 1)/V - 1 (`encode`). Every gamma (and
gamma') is a scalar, a `[B]` vector (one per example) or an array of the data's shape
`[B, *data_shape]`: a per-dimension schedule, as in a multivariate noise process where each
dimension d has its own gamma_d(t); the terms are then sums of per-dimension terms, each
with its own gamma_d (the weighting happens before the sum over dimensions).

Example (an epsilon-predicting model in continuous time; `model` stands in for a network):
  >>> import jax, jax.numpy as jnp
  >>> from vdm_jax import elbo, gaussian, schedules, times
  >>> schedule = schedules.LinearSchedule()
  >>> model = lambda z_t, gamma_t: 0.5 * z_t                       # z_t, gamma_t -> eps_hat
  >>> k = jnp.zeros((4, 8, 8, 1), jnp.int32)                       # integer data, V = 256
  >>> key_t, key_e = jax.random.split(jax.random.key(0))
  >>> x = elbo.encode(k, 256)                                    # [B, H, W, C]
  >>> t = times.sample_times(key_t, x.shape[0])                   # [B]
  >>> gamma_t, dgamma = schedules.gamma_and_derivative(schedule, t)
  >>> eps = jax.random.normal(key_e, x.shape)
  >>> z_t = gaussian.q_sample(x, gamma_t, eps)
  >>> loss_diff = elbo.diffusion_loss_continuous(eps, model(z_t, gamma_t), dgamma)
  >>> loss_diff.shape, loss_diff.dtype                           # nats per example
  ((4,), dtype('float32'))

A per-dimension schedule gives gamma_t and its derivative the data's shape; the same
calls weight each dimension's squared error by its own gamma'_d(t):
  >>> rate = jnp.linspace(10.0, 20.0, 64).reshape(1, 8, 8, 1)    # gamma'_d, one per pixel
  >>> gamma_t, dgamma = -10.0 + rate * t[:, None, None, None], jnp.broadcast_to(rate, x.shape)
  >>> z_t = gaussian.q_sample(x, gamma_t, eps)                    # gamma_t: [B, 8, 8, 1]
  >>> elbo.diffusion_loss_continuous(eps, model(z_t, gamma_t), dgamma).shape
  (4,)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.typing import ArrayLike

from vdm_jax import _checks, gaussian, schedules

__all__ = [
  "bits_per_dim",
  "categorical_nll",
  "decoder_logits",
  "denoising_matching_kl",
  "diffusion_loss_continuous",
  "diffusion_loss_discrete",
  "encode",
  "prior_loss",
  "reconstruction_loss",
]


# ---------------------------------------------------------------------------
# Data <-> bin centres and the discrete decoder p(k | z_0).
# ---------------------------------------------------------------------------


def encode(k: ArrayLike, vocab_size: int, *, validate: bool = False) -> jax.Array:
  """Integers k in {0, ..., V-1} -> bin centres x = (2k + 1)/V - 1 in (-1, 1), float32.

  Args:
    k: integer array, any shape, values in {0..V-1} (others give x outside (-1, 1)).
    vocab_size: V, the number of levels (256 for 8-bit images, 17 for sklearn digits).
    validate: check the values of `k` (see `reconstruction_loss`).

  Returns:
    float32 array with the shape of `k`.

  Example:
    >>> import jax.numpy as jnp
    >>> encode(jnp.array([0, 8, 16]), 17).tolist()
    [-0.9412, 0.0, 0.9412]
  """
  k = _checks.as_int("k", k)
  vocab_size = _checks.check_vocab_size(vocab_size)
  _checks.check_levels(k, vocab_size, validate)
  return (2.0 * k.astype(jnp.float32) + 1.0) / vocab_size - 1.0


def decoder_logits(z_0: ArrayLike, gamma_0: ArrayLike, *, vocab_size: int) -> jax.Array:
  r"""Unnormalised log p(k | z_0) over the V bin centres, per data dimension.

  $\log p(k \mid z_0) = -\frac{(z_0/\alpha_0 - x_k)^2}{2\sigma_0^2/\alpha_0^2} + \text{const}
  = -\tfrac12 e^{-\gamma_0}(z_0/\alpha_0 - x_k)^2 + \text{const}$, i.e. the Gaussian
  likelihood of the rescaled latent evaluated at every bin centre and normalised over
  the V values (not over the real line), so it is an exact discrete distribution.

  Args:
    z_0: `[B, ...]` latent at t = 0.
    gamma_0: scalar, `[B]` or `[B, ...]` (per dimension, like `z_0`).
    vocab_size: V.

  Returns:
    logits `[B, ..., V]`; `jax.nn.log_softmax` over the last axis gives log p(k | z_0).
  """
  z_0 = _checks.as_float("z_0", z_0)
  _checks.check_batched("z_0", z_0)
  vocab_size = _checks.check_vocab_size(vocab_size)
  g0 = _checks.per_example("gamma_0", gamma_0, z_0, batch_name="z_0")
  log_a2, _ = schedules.log_alpha2_sigma2(g0)
  z_rescaled = z_0 * jnp.exp(-0.5 * log_a2)  # z_0 / alpha_0
  centres = encode(jnp.arange(vocab_size), vocab_size).reshape((1,) * z_0.ndim + (vocab_size,))
  snr_0 = jnp.exp(-g0)
  snr_0 = snr_0[..., None] if snr_0.ndim else snr_0
  return -0.5 * snr_0 * jnp.square(z_rescaled[..., None] - centres)


def reconstruction_loss(
  k: ArrayLike, z_0: ArrayLike, gamma_0: ArrayLike, *, vocab_size: int = 256, validate: bool = False
) -> jax.Array:
  r"""$-\log p(k \mid z_0)$ summed over data dimensions, in nats.

  Valid range: k in {0..V-1}. Values outside it are not detected by default (shapes and
  dtypes always are): k = V gives NaN, k < 0 a finite but meaningless number. With
  `validate=True` the values are checked with `jax.experimental.checkify`: eagerly a
  failed check raises at once; under `jax.jit`, wrap the jitted function in
  `checkify.checkify` and call `err.throw()` on the error it returns.

  Args:
    k: integer data `[B, ...]` (any number of axes and channels), values in {0..V-1}.
    z_0: latent `[B, ...]`, same shape as `k`, typically q_sample(encode(k), gamma_0, eps).
    gamma_0: scalar, `[B]` or `[B, ...]` (per dimension, like `z_0`).
    vocab_size: V.
    validate: check that every k is in {0..V-1}.

  Returns:
    `[B]` nats.

  Example: at SNR(0) = e^2 a noiseless z_0 still leaves a little doubt between neighbours.
    >>> import jax.numpy as jnp
    >>> from vdm_jax import gaussian
    >>> k = jnp.array([[0, 8, 16]])                                # [B=1, D=3], V = 17
    >>> z_0 = gaussian.q_sample(encode(k, 17), -2.0, jnp.zeros((1, 3)))
    >>> reconstruction_loss(k, z_0, -2.0, vocab_size=17).shape
    (1,)
  """
  k = _checks.as_int("k", k)
  z_0 = _checks.as_float("z_0", z_0)
  _checks.check_same_shape("k", k, "z_0", z_0)
  _checks.check_levels(k, vocab_size, validate)
  return categorical_nll(k, decoder_logits(z_0, gamma_0, vocab_size=vocab_size))


def categorical_nll(k: ArrayLike, logits: ArrayLike) -> jax.Array:
  r"""$-\sum_d \log \mathrm{softmax}(\text{logits}_d)[k_d]$: a factorised categorical NLL.

  Args:
    k: integer data `[B, ...]`, values in {0..V-1}.
    logits: `[B, ..., V]` unnormalised log-probabilities of every level of every dimension.

  Returns:
    `[B]` nats.
  """
  k = _checks.as_int("k", k)
  logits = _checks.as_float("logits", logits)
  if logits.shape[:-1] != k.shape:
    raise ValueError(f"logits of shape {logits.shape} do not match k of shape {k.shape} + (V,).")
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  log_p_k = jnp.take_along_axis(log_probs, k[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return -_checks.sum_except_batch(log_p_k)


# ---------------------------------------------------------------------------
# Prior matching.
# ---------------------------------------------------------------------------


def _kl_std_normal_offset(gamma: jax.Array) -> jax.Array:
  """sigma^2 - 1 - log sigma^2 = softplus(-gamma) - sigmoid(-gamma) >= 0, accurately.

  With a = alpha^2 = sigmoid(-gamma) this is -log(1 - a) - a = a^2/2 + a^3/3 + ...; the
  series is used for small a, where the direct difference loses all its digits.
  """
  a = jax.nn.sigmoid(-gamma)
  direct = jax.nn.softplus(-gamma) - a
  a_small = jnp.minimum(a, 1e-2)
  series = a_small * a_small * (0.5 + a_small * (1.0 / 3.0 + a_small * (0.25 + a_small / 5.0)))
  return jnp.where(a < 1e-2, series, direct)


def prior_loss(x: ArrayLike, gamma_1: ArrayLike) -> jax.Array:
  r"""$D_{KL}(q(z_1 \mid x) \,\|\, N(0, I))$ summed over data dimensions, in nats.

  Per dimension: $\tfrac12(\alpha_1^2 x^2 + \sigma_1^2 - 1 - \log\sigma_1^2)$, with the
  dimension's own gamma_1 when it is given per dimension.

  Args:
    x: data `[B, ...]` (bin centres), floating.
    gamma_1: scalar, `[B]` or `[B, ...]` (per dimension, like `x`).

  Returns:
    `[B]` nats.

  Example:
    >>> import jax.numpy as jnp
    >>> prior_loss(jnp.zeros((2, 3)), jnp.array([5.0, 20.0])).tolist()  # ~ 3 alpha_1^4 / 4
    [3.4e-05, 3.2e-18]
    >>> prior_loss(jnp.zeros((1, 3)), jnp.array([[5.0, 5.0, 20.0]])).tolist()  # per dimension
    [2.3e-05]
  """
  x = _checks.as_float("x", x)
  _checks.check_batched("x", x)
  g1 = _checks.per_example("gamma_1", gamma_1, x)
  a2 = jax.nn.sigmoid(-g1)
  per_dim = 0.5 * (a2 * jnp.square(x) + _kl_std_normal_offset(g1))
  return _checks.sum_except_batch(jnp.broadcast_to(per_dim, x.shape))


# ---------------------------------------------------------------------------
# Denoising matching (the diffusion loss).
# ---------------------------------------------------------------------------


def _sq_error(eps: ArrayLike, eps_hat: ArrayLike) -> tuple[jax.Array, jax.Array]:
  """The checked inputs and their elementwise squared difference `[B, ...]`."""
  eps = _checks.as_float("eps", eps)
  eps_hat = _checks.as_float("eps_hat", eps_hat)
  _checks.check_batched("eps", eps)
  _checks.check_same_shape("eps", eps, "eps_hat", eps_hat)
  return eps, jnp.square(eps - eps_hat)


def _weighted_sum(scale, weight, sq):
  """scale sum_d weight_d sq_d per example `[B]`: `weight` a checked `per_example` value.

  A scalar or per-example weight multiplies the sum over dimensions (the same
  floating-point operations as before per-dimension weights existed); a per-dimension
  weight multiplies before the sum.
  """
  if _checks.is_per_dimension(weight, sq):
    return scale * _checks.sum_except_batch(weight * sq)
  weight = jnp.broadcast_to(weight.reshape(-1), sq.shape[:1])
  return scale * weight * _checks.sum_except_batch(sq)


def diffusion_loss_continuous(
  eps: ArrayLike, eps_hat: ArrayLike, dgamma_dt: ArrayLike
) -> jax.Array:
  r"""Continuous-time (T -> infinity) diffusion loss for one sampled t per example.

  $\mathcal{L}_\infty = \mathbb{E}_{t \sim U[0,1]}[\tfrac12 \gamma'(t)\|\epsilon - \hat\epsilon\|^2]
  = \mathbb{E}_t[-\tfrac12 \mathrm{SNR}'(t)\|x - \hat x\|^2]$; this returns the integrand
  at the sampled t, an unbiased estimate of the sum of the derivation's denoising matching terms
  in the limit of infinitely many steps.

  Args:
    eps: the noise used to draw z_t, `[B, ...]`.
    eps_hat: the model's prediction of it, same shape.
    dgamma_dt: gamma'(t) at each example's t, scalar or `[B]` (see
      `schedules.gamma_and_derivative`), or `[B, ...]` like `eps` for a per-dimension
      schedule: then $\tfrac12\sum_d \gamma_d'(t)(\epsilon_d - \hat\epsilon_d)^2$.

  Returns:
    `[B]` nats.
  """
  eps, sq = _sq_error(eps, eps_hat)
  return _weighted_sum(0.5, _checks.per_example("dgamma_dt", dgamma_dt, eps), sq)


def diffusion_loss_discrete(
  eps: ArrayLike,
  eps_hat: ArrayLike,
  gamma_s: ArrayLike,
  gamma_t: ArrayLike,
  *,
  num_steps: int,
  validate: bool = False,
) -> jax.Array:
  r"""T-step diffusion loss for one sampled step per example (t = i/T, s = (i-1)/T).

  $T \cdot \tfrac12(\mathrm{SNR}(s) - \mathrm{SNR}(t))\|x - \hat x\|^2
  = T \cdot \tfrac12\,\mathrm{expm1}(\gamma_t - \gamma_s)\,\|\epsilon - \hat\epsilon\|^2$,
  i.e. T times the derivation's denoising matching KL at a uniformly drawn step, an unbiased
  estimate of its sum over the T steps.

  Args:
    eps: the noise used to draw z_t, `[B, ...]`.
    eps_hat: the model's prediction of it, same shape.
    gamma_s: scalar, `[B]` or `[B, ...]` (per dimension, like `eps`), gamma((i-1)/T).
    gamma_t: likewise gamma(i/T); valid range gamma_s < gamma_t (gamma increases with t,
      in every dimension). Otherwise the "loss" is negative; not detected unless
      `validate`. Per dimension the weight is $\mathrm{expm1}(\gamma_{t,d} - \gamma_{s,d})$.
    num_steps: T >= 1.
    validate: check gamma_s < gamma_t with `jax.experimental.checkify` (see
      `reconstruction_loss`).

  Returns:
    `[B]` nats.

  Example: divided by T it is the derivation's KL (`denoising_matching_kl`) of the same step.
    >>> import jax, jax.numpy as jnp
    >>> from vdm_jax import gaussian, predictions
    >>> x, x_hat = jnp.zeros((2, 3)), jnp.full((2, 3), 0.1)
    >>> g_s, g_t = jnp.array([-1.0, 0.0]), jnp.array([-0.5, 1.0])
    >>> eps = jax.random.normal(jax.random.key(0), x.shape)
    >>> z_t = gaussian.q_sample(x, g_t, eps)
    >>> eps_hat = predictions.eps_from_x(z_t, x_hat, g_t)
    >>> (diffusion_loss_discrete(eps, eps_hat, g_s, g_t, num_steps=10) / 10).tolist()
    [0.016043, 0.009482]
    >>> denoising_matching_kl(x, x_hat, z_t, g_s, g_t).tolist()
    [0.016043, 0.009482]
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=False)
  eps, sq = _sq_error(eps, eps_hat)
  g_s = _checks.per_example("gamma_s", gamma_s, eps)
  g_t = _checks.per_example("gamma_t", gamma_t, eps)
  if validate:
    checkify.check(
      jnp.all(g_s < g_t),
      "gamma_s must be below gamma_t (gamma increases with t: s = (i - 1)/T < t = i/T); "
      "got gamma_s - gamma_t up to {gap}.",
      gap=jnp.max(g_s - g_t),
    )
  return _weighted_sum(0.5 * num_steps, jnp.expm1(g_t - g_s), sq)


def denoising_matching_kl(
  x: ArrayLike, x_hat: ArrayLike, z_t: ArrayLike, gamma_s: ArrayLike, gamma_t: ArrayLike
) -> jax.Array:
  r"""The derivation's denoising matching term, computed literally as a Gaussian KL.

  $D_{KL}(q(z_s \mid z_t, x) \,\|\, p_\theta(z_s \mid z_t))$ where
  $p_\theta(z_s \mid z_t) = q(z_s \mid z_t, x = \hat x)$ has the posterior's variance
  $\sigma_q^2$; both come from `gaussian.q_posterior` and the KL from
  `gaussian.gaussian_kl`. Analytically it equals
  $\tfrac12(\mathrm{SNR}(s) - \mathrm{SNR}(t))\|x - \hat x\|^2$ (tested), which is what
  `diffusion_loss_discrete` computes, divided by T, in epsilon form.

  Args:
    x: data `[B, ...]`.
    x_hat: prediction of x from z_t, same shape.
    z_t: latent at t, same shape.
    gamma_s: scalar, `[B]` or `[B, ...]` (per dimension), with gamma_s < gamma_t.
    gamma_t: scalar, `[B]` or `[B, ...]`, like gamma_s.

  Returns:
    `[B]` nats.
  """
  x = _checks.as_float("x", x)
  _checks.check_batched("x", x)
  mean_q, var_q = gaussian.q_posterior(z_t, x, gamma_s, gamma_t)
  mean_p, var_p = gaussian.q_posterior(z_t, x_hat, gamma_s, gamma_t)
  return _checks.sum_except_batch(gaussian.gaussian_kl(mean_q, var_q, mean_p, var_p))


# ---------------------------------------------------------------------------
# Units.
# ---------------------------------------------------------------------------


def bits_per_dim(nats: ArrayLike, num_dims: int) -> jax.Array | np.ndarray:
  """nats / (D ln 2): a per-example loss in nats to bits per data dimension.

  Args:
    nats: per-example losses, any shape (typically `[B]`).
    num_dims: D, the number of data dimensions (H * W * C).

  Returns:
    bits per dimension, with the shape of `nats` (a numpy array for a floating numpy
    input, keeping its dtype; a jax.Array otherwise).

  Example:
    >>> import math
    >>> import jax.numpy as jnp
    >>> bits_per_dim(jnp.array([64 * math.log(2.0)]), 64).tolist()
    [1.0]
  """
  if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
    raise ValueError(f"`num_dims` must be a positive int, got {num_dims!r}.")
  if isinstance(nats, np.ndarray | np.floating) and np.issubdtype(nats.dtype, np.floating):
    return np.asarray(nats / (num_dims * math.log(2.0)))  # numpy stays numpy (float64 stays)
  return _checks.as_float("nats", nats) / (num_dims * math.log(2.0))
