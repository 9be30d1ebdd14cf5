r"""The VDM as a Markovian hierarchical VAE: the derivation's two forms of the same ELBO.

The latents $z_{t_0}, \dots, z_{t_N}$ sit on the grid $t_j = j/N$ (N = `num_steps`); the
encoder is the fixed linear-Gaussian chain $q(z_0 \mid x) = N(\alpha_0 x, \sigma_0^2)$,
$q(z_t \mid z_s) = N(\alpha_{t|s} z_s, \sigma^2_{t|s})$ with $\alpha_{t|s} = \alpha_t/\alpha_s$
and $\sigma^2_{t|s} = \sigma_t^2 \cdot (-\mathrm{expm1}(\gamma_s - \gamma_t))$; the decoder is the
model's reverse chain $p(z_s \mid z_t) = q(z_s \mid z_t, x = \hat x(z_t))$, a prior N(0, I) on
$z_1$, and a user-given likelihood $p(x \mid z_0)$. The derivation gives two expressions of the
negative ELBO, each the reconstruction term plus:

* consistency form (the derivation's first derivation):
  $\mathbb{E}\, KL(q(z_1 \mid z_{t_{N-1}}) \,\|\, p(z_1)) +
  \sum_{j=0}^{N-1} \mathbb{E}_{q(z_{t_{j-1}}, z_{t_{j+1}} \mid x)}
  KL(q(z_{t_j} \mid z_{t_{j-1}}) \,\|\, p(z_{t_j} \mid z_{t_{j+1}}))$
  (with $z_{t_{-1}} = x$), an expectation over two random latents per step;
* denoising-matching form: $KL(q(z_1 \mid x) \,\|\, p(z_1)) +
  \sum_{j=1}^N \mathbb{E}_{q(z_{t_j} \mid x)}
  KL(q(z_{t_{j-1}} \mid z_{t_j}, x) \,\|\, p(z_{t_{j-1}} \mid z_{t_j}))$.

Both are estimated here from one shared forward trajectory, so their means agree and
their variances compare directly (the derivation: the second has lower variance).

Example (Gaussian data with its Bayes-optimal denoiser, so the bound is nearly tight):
  >>> import jax, jax.numpy as jnp
  >>> from vdm_jax import hvae, schedules, testing
  >>> data = testing.GaussianData(mean=0.0, std=0.5)
  >>> x = 0.5 * jax.random.normal(jax.random.key(0), (4, 2))      # [B, D]
  >>> schedule = schedules.LinearSchedule(gamma_min=-10.0, gamma_max=10.0)
  >>> args = (x, data.x_hat, schedule, 8, testing.gaussian_decoder_nll)
  >>> denoising = hvae.negative_elbo_denoising(jax.random.key(1), *args)
  >>> consistency = hvae.negative_elbo_consistency(jax.random.key(1), *args)
  >>> denoising.shape, consistency.shape                          # nats per example
  ((4,), (4,))
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vdm_jax import _checks, elbo, gaussian, schedules

__all__ = [
  "negative_elbo_consistency",
  "negative_elbo_denoising",
  "negative_elbo_sampled",
  "sample_trajectory",
]

XHatFn = Callable[[jax.Array, jax.Array], jax.Array]  # (z_t [B, ...], gamma_t [B]) -> x_hat
NllFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]  # (x, z_0, gamma_0) -> [B]


def sample_trajectory(
  key: jax.Array, x: ArrayLike, schedule: schedules.Schedule, num_steps: int
) -> tuple[jax.Array, jax.Array]:
  """Samples z_{t_0}, ..., z_{t_N} from the forward Markov chain q(z_{0:1} | x).

  Args:
    key: `jax.random` key.
    x: data `[B, ...]`.
    schedule: callable t -> gamma.
    num_steps: N >= 1.

  Returns:
    (gammas `[N + 1]`, z `[N + 1, B, ...]`) with z[j] ~ q(z_{t_j} | z_{t_{j-1}}).
  """
  x = _checks.as_float("x", x)
  _checks.check_batched("x", x)
  num_steps = _checks.check_num_steps(num_steps, allow_zero=False)
  gammas = schedule(jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps)
  keys = jax.random.split(key, num_steps + 1)
  z_0 = gaussian.q_sample(x, gammas[0], jax.random.normal(keys[0], x.shape))

  def step(z_s, inputs):
    g_s, g_t, key = inputs
    mean, var = _forward_transition(z_s, g_s, g_t)
    z_t = mean + jnp.sqrt(var) * jax.random.normal(key, z_s.shape)
    return z_t, z_t

  _, rest = jax.lax.scan(step, z_0, (gammas[:-1], gammas[1:], keys[1:]))
  return gammas, jnp.concatenate([z_0[None], rest], axis=0)


def _forward_transition(z_s, gamma_s, gamma_t):
  """Mean and variance of q(z_t | z_s) = N(alpha_{t|s} z_s, sigma^2_{t|s})."""
  log_a2_s, _ = schedules.log_alpha2_sigma2(gamma_s)
  log_a2_t, log_s2_t = schedules.log_alpha2_sigma2(gamma_t)
  alpha_ts = jnp.exp(0.5 * (log_a2_t - log_a2_s))
  var_ts = jnp.exp(log_s2_t) * -jnp.expm1(gamma_s - gamma_t)
  return alpha_ts * z_s, var_ts


def _reverse(x_hat_fn: XHatFn, z_t, gamma_s, gamma_t):
  """Mean and variance of the model's p(z_s | z_t) = q(z_s | z_t, x_hat(z_t))."""
  batch = z_t.shape[0]
  x_hat = x_hat_fn(z_t, jnp.full((batch,), gamma_t))
  return gaussian.q_posterior(z_t, x_hat, gamma_s, gamma_t)


def _trajectory_and_recon(
  key: jax.Array, x: ArrayLike, schedule: schedules.Schedule, num_steps: int, nll_fn: NllFn
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(x as float, gammas `[N + 1]`, z `[N + 1, B, ...]` of `sample_trajectory`, the
  reconstruction -log p(x | z_0) `[B]`): what every form of the ELBO starts from."""
  x = _checks.as_float("x", x)
  gammas, z = sample_trajectory(key, x, schedule, num_steps)
  return x, gammas, z, nll_fn(x, z[0], jnp.full((x.shape[0],), gammas[0]))


def negative_elbo_denoising(
  key: jax.Array,
  x: ArrayLike,
  x_hat_fn: XHatFn,
  schedule: schedules.Schedule,
  num_steps: int,
  nll_fn: NllFn,
) -> jax.Array:
  """The derivation's denoising-matching form of -ELBO, one Monte Carlo sample, `[B]` nats.

  Args:
    key: `jax.random` key (the same key gives the same trajectory as in
      `negative_elbo_consistency`).
    x: data `[B, ...]`.
    x_hat_fn: the model's prediction of x, `(z_t [B, ...], gamma_t [B]) -> [B, ...]`.
    schedule: callable t -> gamma.
    num_steps: N >= 1.
    nll_fn: -log p(x | z_0), `(x, z_0, gamma_0 [B]) -> [B]`.

  Returns:
    `[B]` nats: -log p(x|z_0) + KL(q(z_1|x) || N(0,I)) + sum_j KL(q(z_s|z_t,x) || p(z_s|z_t)).
  """
  x, gammas, z, recon = _trajectory_and_recon(key, x, schedule, num_steps, nll_fn)
  batch = x.shape[0]
  prior = elbo.prior_loss(x, gammas[-1])

  def term(z_t, g_s, g_t):
    x_hat = x_hat_fn(z_t, jnp.full((batch,), g_t))
    return elbo.denoising_matching_kl(x, x_hat, z_t, g_s, g_t)

  diffusion = jax.vmap(term)(z[1:], gammas[:-1], gammas[1:]).sum(axis=0)
  return recon + prior + diffusion


def _bridge(z_r, z_t, gamma_r, gamma_s, gamma_t):
  """Mean and variance of q(z_s | z_r, z_t) for r < s < t on the forward chain."""
  alpha_sr, var_sr = _forward_transition(1.0, gamma_r, gamma_s)
  alpha_ts, var_ts = _forward_transition(1.0, gamma_s, gamma_t)
  var_tr = var_ts + alpha_ts**2 * var_sr
  mean = (alpha_ts * var_sr * z_t + alpha_sr * var_ts * z_r) / var_tr
  return mean, var_ts * var_sr / var_tr


def _expected_log_ratio(mean, var, mean_q, var_q, mean_p, var_p):
  """E_{z ~ N(mean, var)} [log N(z; mean_q, var_q) - log N(z; mean_p, var_p)], summed to [B]."""

  def cross(m, v):
    return -0.5 * (jnp.log(v) + (jnp.square(mean - m) + var) / v)

  return _checks.sum_except_batch(cross(mean_q, var_q) - cross(mean_p, var_p))


def negative_elbo_consistency(
  key: jax.Array,
  x: ArrayLike,
  x_hat_fn: XHatFn,
  schedule: schedules.Schedule,
  num_steps: int,
  nll_fn: NllFn,
  *,
  bridge: bool = True,
) -> jax.Array:
  r"""The derivation's first (consistency) form of -ELBO, one Monte Carlo sample, `[B]` nats.

  Same arguments as `negative_elbo_denoising`. Returns `[B]` nats:
  -log p(x|z_0) + KL(q(z_1|z_{t_{N-1}}) || N(0,I)) + sum_{j=0}^{N-1} C_j, z_{t_{-1}} = x,
  where C_j is the consistency term of step j, estimated from the trajectory's
  (z_{t_{j-1}}, z_{t_{j+1}}), the "two random variables per step" of the derivation.

  The derivation asks whether q(x_{t-1}, x_t, x_{t+1} | x_0) = q(x_{t-1}, x_{t+1} | x_0)
  q(x_t | x_{t-1}). It does not: given both neighbours, x_t follows the Gaussian bridge
  q(x_t | x_{t-1}, x_{t+1}), so the exact term is
  $C_j = \mathbb{E}_{q(z_j \mid z_{j-1}, z_{j+1})}[\log q(z_j \mid z_{j-1}) - \log p(z_j \mid z_{j+1})]$,
  computed analytically here (`bridge=True`, an unbiased estimate of the same ELBO as
  `negative_elbo_denoising`). `bridge=False` evaluates the derivation's literal
  $D_{KL}(q(z_j \mid z_{j-1}) \| p(z_j \mid z_{j+1}))$ instead, which is biased (tested).
  """
  x, gammas, z, recon = _trajectory_and_recon(key, x, schedule, num_steps, nll_fn)

  # KL(q(z_1 | z_{t_{N-1}}) || N(0, I)).
  mean_1, var_1 = _forward_transition(z[-2], gammas[-2], gammas[-1])
  prior = _checks.sum_except_batch(
    gaussian.gaussian_kl(mean_1, jnp.broadcast_to(var_1, mean_1.shape), 0.0, 1.0)
  )

  def consistency(mean_q, var_q, z_prev, g_prev, g_j, z_next, g_next):
    mean_p, var_p = _reverse(x_hat_fn, z_next, g_j, g_next)
    var_q = jnp.broadcast_to(var_q, mean_q.shape)
    if not bridge:
      return _checks.sum_except_batch(gaussian.gaussian_kl(mean_q, var_q, mean_p, var_p))
    mean_b, var_b = _bridge(z_prev, z_next, g_prev, g_j, g_next)
    return _expected_log_ratio(mean_b, var_b, mean_q, var_q, mean_p, var_p)

  # j = 0: q(z_0 | x), whose bridge given z_{t_1} is q_posterior(z_{t_1}, x).
  alpha_0, sigma_0 = schedules.alpha_sigma(gammas[0])
  if bridge:
    mean_p, var_p = _reverse(x_hat_fn, z[1], gammas[0], gammas[1])
    mean_b, var_b = gaussian.q_posterior(z[1], x, gammas[0], gammas[1])
    var_q = jnp.broadcast_to(sigma_0**2, x.shape)
    total = _expected_log_ratio(mean_b, var_b, alpha_0 * x, var_q, mean_p, var_p)
  else:
    total = consistency(alpha_0 * x, sigma_0**2, None, None, gammas[0], z[1], gammas[1])

  # j = 1..N-1: q(z_{t_j} | z_{t_{j-1}}) against p(z_{t_j} | z_{t_{j+1}}).
  def term(z_prev, z_next, g_prev, g_j, g_next):
    mean_q, var_q = _forward_transition(z_prev, g_prev, g_j)
    return consistency(mean_q, var_q, z_prev, g_prev, g_j, z_next, g_next)

  if num_steps > 1:
    total = total + jax.vmap(term)(z[:-2], z[2:], gammas[:-2], gammas[1:-1], gammas[2:]).sum(axis=0)
  return recon + prior + total


def negative_elbo_sampled(
  key: jax.Array,
  x: ArrayLike,
  x_hat_fn: XHatFn,
  schedule: schedules.Schedule,
  num_steps: int,
  nll_fn: NllFn,
) -> jax.Array:
  r"""-log p(x, z_{0:1}) + log q(z_{0:1} | x) on one sampled trajectory, `[B]` nats.

  The ELBO's definition $\mathbb{E}_{q(z|x)}[\log p(x, z) / q(z|x)]$ estimated with no
  analytic expectation at all: every latent is sampled and the log densities of the
  forward and reverse chains are evaluated at the samples. Same arguments and same mean
  as `negative_elbo_denoising`; the baseline against which the analytic forms reduce
  variance.
  """
  x, gammas, z, recon = _trajectory_and_recon(key, x, schedule, num_steps, nll_fn)
  alpha_0, sigma_0 = schedules.alpha_sigma(gammas[0])
  log_q = gaussian.gaussian_log_prob(z[0], alpha_0 * x, sigma_0**2)
  log_p = gaussian.gaussian_log_prob(z[-1], 0.0, 1.0)

  def step(z_s, z_t, g_s, g_t):
    mean_q, var_q = _forward_transition(z_s, g_s, g_t)
    mean_p, var_p = _reverse(x_hat_fn, z_t, g_s, g_t)
    return _checks.sum_except_batch(
      gaussian.gaussian_log_prob(z_t, mean_q, var_q)
      - gaussian.gaussian_log_prob(z_s, mean_p, var_p)
    )

  log_ratio = jax.vmap(step)(z[:-1], z[1:], gammas[:-1], gammas[1:]).sum(axis=0)
  return recon + log_ratio + _checks.sum_except_batch(log_q - log_p)
