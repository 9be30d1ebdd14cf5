r"""The three terms of the VDM evidence lower bound, per example, in nats.

$-\log p(x) \le \mathcal{L}_{recon} + \mathcal{L}_{prior} + \mathcal{L}_{diffusion}$ (the
seed's ELBO in its denoising-matching form, DESIGN §2):

* reconstruction: $-\log p(k \mid z_0)$ with an exact factorised discrete decoder;
* prior matching: $D_{KL}(q(z_1 \mid x) \,\|\, N(0, I))$;
* denoising matching: $\sum_{i=1}^T D_{KL}(q(z_s \mid z_t, x) \| p_\theta(z_s \mid z_t))$,
  $s = (i-1)/T$, $t = i/T$, estimated with one random $i$, or its T -> infinity limit.

Every term returns shape `[B]`, summed over all non-batch axes. Data are integers
k in {0..V-1} mapped to bin centres x = (2k + 1)/V - 1 (`encode`).

Example (an epsilon-predicting model in continuous time; `model` stands in for a network):
  >>> import jax, jax.numpy as jnp
  >>> from vdm_jax import elbo, gaussian, schedules
  >>> schedule = schedules.LinearSchedule()
  >>> model = lambda z_t, gamma_t: 0.5 * z_t                       # z_t, gamma_t -> eps_hat
  >>> k = jnp.zeros((4, 8, 8, 1), jnp.int32)                       # integer data, V = 256
  >>> key_t, key_e = jax.random.split(jax.random.key(0))
  >>> x = elbo.encode(k, 256)                                    # [B, H, W, C]
  >>> t = elbo.sample_times(key_t, x.shape[0])                   # [B]
  >>> gamma_t, dgamma = schedules.gamma_and_derivative(schedule, t)
  >>> eps = jax.random.normal(key_e, x.shape)
  >>> z_t = gaussian.q_sample(x, gamma_t, eps)
  >>> loss_diff = elbo.diffusion_loss_continuous(eps, model(z_t, gamma_t), dgamma)
  >>> loss_diff.shape, loss_diff.dtype                           # nats per example
  ((4,), dtype('float32'))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypedDict

import jax
import jax.numpy as jnp
from jax.experimental import checkify
from jax.typing import ArrayLike

from vdm_jax import _checks, gaussian, schedules

__all__ = [
  "TimeMoments",
  "bits_per_dim",
  "categorical_nll",
  "decoder_logits",
  "denoising_matching_kl",
  "diffusion_loss_continuous",
  "diffusion_loss_discrete",
  "encode",
  "eps_from_v",
  "eps_from_x",
  "importance_bin_probs",
  "importance_sample_times",
  "init_time_moments",
  "prediction_to_eps",
  "prior_loss",
  "reconstruction_loss",
  "sample_times",
  "time_bin",
  "times_from_uniform",
  "update_time_moments",
  "v_from_x_eps",
  "vae_elbo",
  "x_from_eps",
  "x_from_v",
]


class TimeMoments(TypedDict):
  """Running per-bin statistics of the diffusion loss for importance sampling of t."""

  second_moment: jax.Array  # [K] float32, E[L(t)^2] in each of the K time bins
  seen: jax.Array  # [K] bool, whether the bin has had a sample yet


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
    gamma_0: scalar or `[B]`.
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
    gamma_0: scalar or `[B]`.
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

  Per dimension: $\tfrac12(\alpha_1^2 x^2 + \sigma_1^2 - 1 - \log\sigma_1^2)$.

  Args:
    x: data `[B, ...]` (bin centres), floating.
    gamma_1: scalar or `[B]`.

  Returns:
    `[B]` nats.

  Example:
    >>> import jax.numpy as jnp
    >>> prior_loss(jnp.zeros((2, 3)), jnp.array([5.0, 20.0])).tolist()  # ~ 3 alpha_1^4 / 4
    [3.4e-05, 3.2e-18]
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


def _sq_error(eps, eps_hat):
  eps = _checks.as_float("eps", eps)
  eps_hat = _checks.as_float("eps_hat", eps_hat)
  _checks.check_batched("eps", eps)
  _checks.check_same_shape("eps", eps, "eps_hat", eps_hat)
  return eps, _checks.sum_except_batch(jnp.square(eps - eps_hat))


def _per_example_vector(name, v, like):
  """A scalar or `[B]` weight, returned as shape `[B]`."""
  return jnp.broadcast_to(_checks.per_example(name, v, like).reshape(-1), like.shape[:1])


def diffusion_loss_continuous(
  eps: ArrayLike, eps_hat: ArrayLike, dgamma_dt: ArrayLike
) -> jax.Array:
  r"""Continuous-time (T -> infinity) diffusion loss for one sampled t per example.

  $\mathcal{L}_\infty = \mathbb{E}_{t \sim U[0,1]}[\tfrac12 \gamma'(t)\|\epsilon - \hat\epsilon\|^2]
  = \mathbb{E}_t[-\tfrac12 \mathrm{SNR}'(t)\|x - \hat x\|^2]$; this returns the integrand
  at the sampled t, an unbiased estimate of the sum of the seed's denoising matching terms
  in the limit of infinitely many steps.

  Args:
    eps: the noise used to draw z_t, `[B, ...]`.
    eps_hat: the model's prediction of it, same shape.
    dgamma_dt: gamma'(t) at each example's t, scalar or `[B]` (see
      `schedules.gamma_and_derivative`).

  Returns:
    `[B]` nats.
  """
  eps, sq = _sq_error(eps, eps_hat)
  return 0.5 * _per_example_vector("dgamma_dt", dgamma_dt, eps) * sq


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
  i.e. T times the seed's denoising matching KL at a uniformly drawn step, an unbiased
  estimate of its sum over the T steps.

  Args:
    eps: the noise used to draw z_t, `[B, ...]`.
    eps_hat: the model's prediction of it, same shape.
    gamma_s: scalar or `[B]`, gamma((i-1)/T).
    gamma_t: scalar or `[B]`, gamma(i/T); valid range gamma_s < gamma_t (gamma increases
      with t). Otherwise the "loss" is negative; not detected unless `validate`.
    num_steps: T >= 1.
    validate: check gamma_s < gamma_t with `jax.experimental.checkify` (see
      `reconstruction_loss`).

  Returns:
    `[B]` nats.

  Example: divided by T it is the seed's KL (`denoising_matching_kl`) of the same step.
    >>> import jax, jax.numpy as jnp
    >>> from vdm_jax import gaussian
    >>> x, x_hat = jnp.zeros((2, 3)), jnp.full((2, 3), 0.1)
    >>> g_s, g_t = jnp.array([-1.0, 0.0]), jnp.array([-0.5, 1.0])
    >>> eps = jax.random.normal(jax.random.key(0), x.shape)
    >>> z_t = gaussian.q_sample(x, g_t, eps)
    >>> eps_hat = eps_from_x(z_t, x_hat, g_t)
    >>> (diffusion_loss_discrete(eps, eps_hat, g_s, g_t, num_steps=10) / 10).tolist()
    [0.016043, 0.009482]
    >>> denoising_matching_kl(x, x_hat, z_t, g_s, g_t).tolist()
    [0.016043, 0.009482]
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=False)
  eps, sq = _sq_error(eps, eps_hat)
  g_s = _per_example_vector("gamma_s", gamma_s, eps)
  g_t = _per_example_vector("gamma_t", gamma_t, eps)
  if validate:
    checkify.check(
      jnp.all(g_s < g_t),
      "gamma_s must be below gamma_t (gamma increases with t: s = (i - 1)/T < t = i/T); "
      "got gamma_s - gamma_t up to {gap}.",
      gap=jnp.max(g_s - g_t),
    )
  return 0.5 * num_steps * jnp.expm1(g_t - g_s) * sq


def denoising_matching_kl(
  x: ArrayLike, x_hat: ArrayLike, z_t: ArrayLike, gamma_s: ArrayLike, gamma_t: ArrayLike
) -> jax.Array:
  r"""The seed's denoising matching term, computed literally as a Gaussian KL.

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
    gamma_s, gamma_t: scalars or `[B]`, with gamma_s < gamma_t.

  Returns:
    `[B]` nats.
  """
  x = _checks.as_float("x", x)
  _checks.check_batched("x", x)
  mean_q, var_q = gaussian.q_posterior(z_t, x, gamma_s, gamma_t)
  mean_p, var_p = gaussian.q_posterior(z_t, x_hat, gamma_s, gamma_t)
  return _checks.sum_except_batch(gaussian.gaussian_kl(mean_q, var_q, mean_p, var_p))


# ---------------------------------------------------------------------------
# Time sampling.
# ---------------------------------------------------------------------------


def sample_times(
  key: jax.Array, batch_size: int, *, num_steps: int = 0, antithetic: bool = True
) -> jax.Array:
  r"""One diffusion time per example, t in (0, 1].

  With `antithetic=True` (low-discrepancy sampling, as in the VDM paper) a single
  uniform u_0 is drawn and u_b = (u_0 + b/B) mod 1, so the batch covers [0, 1)
  evenly; each u_b is still marginally uniform, so the loss stays unbiased while its
  variance across the batch drops. Continuous time returns t = 1 - u. With
  `num_steps = T > 0` the grid step i = floor(u T) + 1 in {1..T} is returned as
  t = i/T (its predecessor is s = t - 1/T).

  Args:
    key: a `jax.random` key.
    batch_size: B.
    num_steps: 0 for continuous time, else T.
    antithetic: stratify the batch as above; else i.i.d. uniforms.

  Returns:
    t, float32 `[B]`.

  Example: antithetic draws put one t in each quarter of (0, 1] for B = 4.
    >>> import jax
    >>> t = sample_times(jax.random.key(0), 4)
    >>> sorted((t * 4).astype(int).tolist())
    [0, 1, 2, 3]
    >>> sample_times(jax.random.key(0), 4, num_steps=10).tolist()  # grid times i/T
    [1.0, 0.2, 0.5, 0.7]
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=True)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
  if antithetic:
    u0 = jax.random.uniform(key, ())
    u = jnp.mod(u0 + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  else:
    u = jax.random.uniform(key, (batch_size,))
  return times_from_uniform(u, num_steps=num_steps)


def times_from_uniform(u: ArrayLike, *, num_steps: int = 0) -> jax.Array:
  """Diffusion times from uniforms u in [0, 1], elementwise (any shape).

  Continuous time (T = 0): t = 1 - u. Discrete time: the grid step
  i = min(floor(u T), T - 1) + 1 in {1..T}, returned as t = i/T. Each t depends on its own
  u only, so a t drawn for one example does not depend on the batch it is evaluated in.

  Args:
    u: float array of uniforms in [0, 1].
    num_steps: 0 for continuous time, else T.

  Returns:
    t, same shape as `u`.
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=True)
  u = _checks.as_float("u", u)
  if num_steps == 0:
    return 1.0 - u
  i = jnp.minimum(jnp.floor(u * num_steps), num_steps - 1) + 1.0
  return i / num_steps


def time_bin(t: ArrayLike, num_bins: int, *, discrete: bool = False) -> jax.Array:
  """Index b in {0..K-1} of the bin (b/K, (b+1)/K] holding t (t = 0 goes to bin 0).

  With `discrete=True`, t is a grid time i/K and b = i - 1, found by rounding: float32
  i/K times K is often a hair above i, which `ceil` would put in the next bin.
  """
  t = _checks.as_float("t", t)
  num_bins = _checks.check_num_steps(num_bins, allow_zero=False)
  upper = jnp.round(t * num_bins) if discrete else jnp.ceil(t * num_bins)
  return jnp.clip(upper.astype(jnp.int32) - 1, 0, num_bins - 1)


def importance_sample_times(
  key: jax.Array,
  batch_size: int,
  bin_probs: ArrayLike,
  *,
  num_steps: int = 0,
  antithetic: bool = True,
) -> tuple[jax.Array, jax.Array]:
  r"""t from a piecewise-constant proposal over K bins, with importance weights 1/p(t).

  The proposal puts mass p_b on the bin (b/K, (b+1)/K] (uniform inside it); t is the
  inverse CDF of the (antithetic, as in `sample_times`) uniforms, so the batch is
  stratified in the proposal's quantiles. The weight w = 1 / (K p_b) is the ratio of
  the uniform density to the proposal's, so for any per-t loss L,
  $\mathbb{E}_{t\sim p}[w\,L(t)] = \mathbb{E}_{t\sim U}[L(t)]$: the diffusion term
  times w stays an unbiased estimate of the same ELBO. The variance of $w L$ is
  smallest for $p(t) \propto \sqrt{\mathbb{E}[L(t)^2]}$ (see `importance_bin_probs`).
  With `num_steps = T > 0`, K must equal T and t = (b + 1)/T is the grid time of step b.

  Args:
    key: `jax.random` key.
    batch_size: B.
    bin_probs: `[K]` positive probabilities (normalised here).
    num_steps: 0 for continuous time, else T (= K).
    antithetic: stratify the uniforms.

  Returns:
    (t `[B]` in (0, 1], weight `[B]`), float32.

  Example: the proposal learnt from per-bin losses, then t and 1/p(t) drawn from it.
    >>> import jax, jax.numpy as jnp
    >>> moments = init_time_moments(4)
    >>> t, loss = jnp.array([0.1, 0.4, 0.6, 0.9]), jnp.array([4.0, 1.0, 1.0, 1.0])
    >>> moments = update_time_moments(moments, t, loss)
    >>> probs = importance_bin_probs(moments)
    >>> probs.tolist()  # sqrt(E[L^2]) = 4, 1, 1, 1, mixed with 1% uniform
    [0.5682, 0.1439, 0.1439, 0.1439]
    >>> t, weight = importance_sample_times(jax.random.key(0), 8, probs)
    >>> t.shape, weight.shape
    ((8,), (8,))
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=True)
  probs = _checks.as_float("bin_probs", bin_probs)
  if probs.ndim != 1:
    raise ValueError(f"`bin_probs` must be a vector [K], got shape {probs.shape}.")
  num_bins = probs.shape[0]
  if num_steps and num_bins != num_steps:
    raise ValueError(
      f"Discrete time needs one probability per step: K = {num_bins} != T = {num_steps}."
    )
  probs = probs / jnp.sum(probs)
  u = 1.0 - sample_times(key, batch_size, antithetic=antithetic)  # [0, 1)
  cdf = jnp.cumsum(probs)
  b = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, num_bins - 1)
  weight = 1.0 / (num_bins * probs[b])
  upper = (b + 1).astype(probs.dtype)  # the bin's right edge times K (integer to float)
  if num_steps:
    return upper / num_steps, weight
  frac = jnp.clip((u - (cdf[b] - probs[b])) / probs[b], 0.0, 1.0)
  return (upper - frac) / num_bins, weight  # in (b/K, (b+1)/K]


def update_time_moments(
  moments: TimeMoments,
  t: ArrayLike,
  loss: ArrayLike,
  *,
  decay: float = 0.99,
  num_steps: int = 0,
) -> TimeMoments:
  """Running estimate of E[L(t)^2] per time bin, from one batch of per-t losses.

  Args:
    moments: {"second_moment": `[K]`, "seen": bool `[K]`}; start from `init_time_moments`.
    t: times `[B]`.
    loss: the per-example loss at t, `[B]` (unweighted: not multiplied by 1/p(t)).
    decay: exponential moving average factor for bins with new samples.
    num_steps: T > 0 when t are grid times i/T (then K = T bins, one per step).

  Returns:
    The updated moments; a bin seen for the first time takes its batch mean.
  """
  m, seen = moments["second_moment"], moments["seen"]
  num_bins = m.shape[0]
  b = time_bin(t, num_bins, discrete=num_steps > 0)
  count = jax.ops.segment_sum(jnp.ones_like(loss), b, num_segments=num_bins)
  batch_m = jax.ops.segment_sum(jnp.square(loss), b, num_segments=num_bins) / jnp.maximum(count, 1)
  has = count > 0
  new_m = jnp.where(has, jnp.where(seen, decay * m + (1.0 - decay) * batch_m, batch_m), m)
  return {"second_moment": new_m, "seen": seen | has}


def init_time_moments(num_bins: int) -> TimeMoments:
  """Empty per-bin second moments for `update_time_moments`."""
  num_bins = _checks.check_num_steps(num_bins, allow_zero=False)
  return {
    "second_moment": jnp.zeros((num_bins,), jnp.float32),
    "seen": jnp.zeros((num_bins,), bool),
  }


def importance_bin_probs(moments: TimeMoments, *, uniform_mix: float = 0.01) -> jax.Array:
  r"""The proposal $p_b \propto \sqrt{\mathbb{E}[L^2]}_b$, mixed with a little uniform mass.

  Uniform until every bin has been seen; the uniform share keeps every weight 1/(K p_b)
  below 1/uniform_mix.
  """
  m, seen = moments["second_moment"], moments["seen"]
  root = jnp.sqrt(jnp.maximum(m, 0.0))
  num_bins = m.shape[0]
  total = jnp.sum(root)
  ready = jnp.all(seen) & (total > 0)
  shaped = root / jnp.where(total > 0, total, 1.0)
  probs = (1.0 - uniform_mix) * shaped + uniform_mix / num_bins
  return jnp.where(ready, probs, jnp.full_like(m, 1.0 / num_bins))


# ---------------------------------------------------------------------------
# Conversions between predictions of x, epsilon and v.
# ---------------------------------------------------------------------------


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


def prediction_to_eps(
  prediction: ArrayLike, z_t: ArrayLike, gamma_t: ArrayLike, *, parameterization: str
) -> jax.Array:
  """Converts a network output to an epsilon prediction.

  Args:
    prediction: network output `[B, ...]`.
    z_t: the network's input latent, same shape.
    gamma_t: scalar or `[B]`.
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


# ---------------------------------------------------------------------------
# Units.
# ---------------------------------------------------------------------------


def bits_per_dim(nats: ArrayLike, num_dims: int) -> jax.Array:
  """nats / (D ln 2): a per-example loss in nats to bits per data dimension.

  Args:
    nats: per-example losses, any shape (typically `[B]`).
    num_dims: D, the number of data dimensions (H * W * C).

  Returns:
    bits per dimension, with the shape of `nats`.

  Example:
    >>> import math
    >>> import jax.numpy as jnp
    >>> bits_per_dim(jnp.array([64 * math.log(2.0)]), 64).tolist()
    [1.0]
  """
  if isinstance(num_dims, bool) or not isinstance(num_dims, int) or num_dims < 1:
    raise ValueError(f"`num_dims` must be a positive int, got {num_dims!r}.")
  return _checks.as_float("nats", nats) / (num_dims * math.log(2.0))


# ---------------------------------------------------------------------------
# The seed's first model: the Gaussian VAE.
# ---------------------------------------------------------------------------


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

  $-\mathrm{ELBO} = \mathbb{E}_{q_\phi(z|x)}[-\log p_\theta(k \mid z)]
  + D_{KL}(q_\phi(z|x) \,\|\, \mathcal{N}(0, I))$ with
  $q_\phi(z|x) = \mathcal{N}(\mu_\phi(x), \mathrm{diag}\,\sigma^2_\phi(x))$ (the seed's
  Gaussian VAE). The KL is analytic (`gaussian.gaussian_kl`); the reconstruction is the
  Monte Carlo average $\frac1L \sum_{l=1}^L -\log p_\theta(k \mid z^{(l)})$ over
  reparameterised draws $z^{(l)} = \mu_\phi(x) + \sigma_\phi(x) \odot \epsilon^{(l)}$,
  $\epsilon^{(l)} \sim \mathcal{N}(0, I)$ (the seed writes the sum; the average is the
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
