r"""Certify that the framework's loss is a correct ELBO, with no training involved.

For continuous data whose Bayes-optimal denoiser E[x | z_t] and density p(x) are closed
form (`testing.GaussianMixture`, `testing.GaussianData`), the ELBO computed by the
library's own pure functions with that denoiser must

* lie above -log p(x) (on average over x),
* decrease as the number of steps T doubles (Kingma et al. 2021, Appendix), and
* in continuous time, equal -log p(x) up to the prior and reconstruction mismatches at
  the ends of the schedule, which vanish as gamma_min -> -inf and gamma_max -> +inf.

The reconstruction term uses the Gaussian decoder N(x; z_0/alpha_0, sigma_0^2/alpha_0^2),
the continuous-data counterpart of the discrete decoder.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import elbo, gaussian, predictions, schedules, testing, times

__all__ = ["certify"]


def _terms(key, data, schedule, x, num_samples: int, num_steps: int):
  """Per-example (recon, prior, diffusion) in nats, each `[N]`, averaged over samples."""
  n = x.shape[0]
  # `[N]`, or `[N, D]` for a per-dimension schedule (t `[N]` -> gamma `[N, D]`).
  g0, g1 = schedule(jnp.zeros((n,))), schedule(jnp.ones((n,)))
  key_r, key_d = jax.random.split(key)

  def recon_one(k):
    return testing.gaussian_decoder_nll(
      x, gaussian.q_sample(x, g0, jax.random.normal(k, x.shape)), g0
    )

  recon = jax.lax.map(recon_one, jax.random.split(key_r, num_samples)).mean(0)
  prior = elbo.prior_loss(x, g1)

  def eps_hat(z, gamma):
    return predictions.eps_from_x(z, data.x_hat(z, gamma), gamma)

  if num_steps == 0:

    def diff_one(k):
      k_t, k_e = jax.random.split(k)
      t = times.sample_times(k_t, n)
      gamma, dgamma = schedules.gamma_and_derivative(schedule, t)
      eps = jax.random.normal(k_e, x.shape)
      z = gaussian.q_sample(x, gamma, eps)
      return elbo.diffusion_loss_continuous(eps, eps_hat(z, gamma), dgamma)

    diffusion = jax.lax.map(diff_one, jax.random.split(key_d, num_samples)).mean(0)
  else:
    # Every one of the T steps (no sampling of t), noise averaged over `num_samples` draws.
    def step(i):
      t = (i + 1.0) / num_steps
      t = jnp.full((n,), t)
      g_t, g_s = schedule(t), schedule(t - 1.0 / num_steps)

      def one(k):
        eps = jax.random.normal(k, x.shape)
        z = gaussian.q_sample(x, g_t, eps)
        return (
          elbo.diffusion_loss_discrete(eps, eps_hat(z, g_t), g_s, g_t, num_steps=num_steps)
          / num_steps
        )

      keys = jax.random.split(jax.random.fold_in(key_d, i), num_samples)
      return jax.lax.map(one, keys).mean(0)

    diffusion = jax.lax.map(step, jnp.arange(num_steps, dtype=jnp.float32)).sum(0)
  return recon, prior, diffusion


def certify(
  key,
  data,
  x,
  schedule: schedules.Schedule,
  *,
  steps=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
  num_samples: int = 16,
  continuous_samples: int = 512,
) -> list[dict]:
  """ELBO of the Bayes-optimal model against the exact NLL, for each T and in continuous time.

  Args:
    key: `jax.random` key.
    data: a `testing.GaussianMixture` or `testing.GaussianData`.
    x: continuous data `[N, D]`, typically drawn from `data`.
    schedule: callable t -> gamma, elementwise, or t `[N]` -> `[N, D]` for a
      per-dimension schedule (e.g. `testing.PerDimensionSchedule`); the certificate holds
      for both (each dimension's diffusion term integrates its own gamma_d).
    steps: the discrete T to evaluate (continuous time, T = 0, is always added last).
    num_samples: Monte Carlo draws of the noise per example and per step (discrete T).
    continuous_samples: draws of (t, noise) per example in continuous time.

  Returns:
    One dict per T (T = 0 last) with "T", "nll", "elbo", "gap" (= elbo - nll, nats per
    example, mean over x), "gap_se" (its standard error over x), "recon", "prior",
    "diffusion" (nats, means).
  """
  x = jnp.asarray(x, jnp.float32)
  nll = -np.asarray(data.log_prob(x), np.float64)
  rows = []
  for num_steps in (*steps, 0):
    draws = continuous_samples if num_steps == 0 else num_samples
    fn = jax.jit(lambda k, n=num_steps, m=draws: _terms(k, data, schedule, x, m, n))
    recon, prior, diffusion = (
      np.asarray(v, np.float64) for v in fn(jax.random.fold_in(key, num_steps))
    )
    total = recon + prior + diffusion
    gap = total - nll
    rows.append(
      {
        "T": num_steps,
        "nll": float(nll.mean()),
        "elbo": float(total.mean()),
        "gap": float(gap.mean()),
        "gap_se": float(gap.std(ddof=1) / math.sqrt(gap.size)),
        "recon": float(recon.mean()),
        "prior": float(prior.mean()),
        "diffusion": float(diffusion.mean()),
      }
    )
  return rows
