"""Discrete T -> continuous limit and exactness of the ELBO with a Bayes-optimal denoiser.

Data: x ~ N(mean, std^2) per dimension. Its optimal denoiser E[x|z_t] and -log p(x) are
closed form (`vdm_jax.testing.GaussianData`), so the ELBO computed by the library's pure
functions can be compared with exact numbers, with no training involved.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import elbo, gaussian, predictions, schedules, testing, times

DATA = testing.GaussianData(mean=0.3, std=0.5)
# Points at least 1 std from the mean (where the expected error decreases with SNR) and
# the data average, which is handled through E_x ||x - x_hat||^2 = s^2 / (1 + rho s^2).
X = np.array([0.3 - 0.75, 0.3 - 0.5, 0.3 + 0.6, 0.3 + 1.2])
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(24)  # exact E over eps for polynomials
WEIGHTS = WEIGHTS / WEIGHTS.sum()


def _discrete_diffusion_by_library(schedule, num_steps, x):
  """sum_i E_eps [diffusion_loss_discrete / T], with E_eps by Gauss-Hermite, per x."""
  t = jnp.arange(1, num_steps + 1, dtype=jnp.float32) / num_steps
  g_t, g_s = schedule(t), schedule(t - 1.0 / num_steps)
  xx = jnp.asarray(np.repeat(x, len(NODES))[:, None], jnp.float32)  # [X*Q, 1]
  eps = jnp.asarray(np.tile(NODES, len(x))[:, None], jnp.float32)

  def per_step(gs, gt):
    z = gaussian.q_sample(xx, gt, eps)
    eps_hat = predictions.eps_from_x(z, DATA.x_hat(z, gt), gt)
    return elbo.diffusion_loss_discrete(eps, eps_hat, gs, gt, num_steps=num_steps) / num_steps

  per = jax.lax.map(lambda a: per_step(*a), (g_s, g_t), batch_size=256).sum(0)
  return np.asarray(per, np.float64).reshape(len(x), len(NODES)) @ WEIGHTS


def _discrete_closed_form(schedule, num_steps, x):
  t = np.arange(1, num_steps + 1) / num_steps
  g_t = np.asarray(schedule(jnp.asarray(t, jnp.float32)), np.float64)
  g_s = np.asarray(schedule(jnp.asarray(t - 1 / num_steps, jnp.float32)), np.float64)
  w = 0.5 * (np.exp(-g_s) - np.exp(-g_t))
  return (w * np.asarray(DATA.expected_sq_error(x[:, None], g_t[None, :]))).sum(-1)


def _data_average(schedule, num_steps):
  t = np.arange(1, num_steps + 1) / num_steps
  g_t = np.asarray(schedule(jnp.asarray(t, jnp.float32)), np.float64)
  g_s = np.asarray(schedule(jnp.asarray(t - 1 / num_steps, jnp.float32)), np.float64)
  s2 = DATA.std**2
  return (0.5 * (np.exp(-g_s) - np.exp(-g_t)) * s2 / (1 + np.exp(-g_t) * s2)).sum()


def test_discrete_library_equals_closed_form():
  schedule = schedules.LinearSchedule(-10.0, 8.0)
  for num_steps in [1, 4, 64]:
    np.testing.assert_allclose(
      _discrete_diffusion_by_library(schedule, num_steps, X),
      _discrete_closed_form(schedule, num_steps, X),
      rtol=2e-3,
    )


def test_discrete_elbo_decreases_with_T_and_approaches_continuous():
  schedule = schedules.LinearSchedule(-10.0, 8.0)
  cont = np.asarray(DATA.continuous_diffusion_loss(X, -10.0, 8.0), np.float64)
  steps = [2**k for k in range(11)]
  by_t = np.stack([_discrete_closed_form(schedule, n, X) for n in steps])
  avg = np.array([_data_average(schedule, n) for n in steps])
  # The library agrees at a few T (the closed form is its independent route).
  for n in [8, 1024]:
    np.testing.assert_allclose(
      _discrete_diffusion_by_library(schedule, n, X), by_t[steps.index(n)], rtol=2e-3
    )
  assert np.all(np.diff(by_t, axis=0) < 0), by_t
  assert np.all(np.diff(avg) < 0), avg
  gaps = by_t - cont
  assert np.all(gaps > 0)
  # First-order convergence: doubling T halves the gap once T resolves the schedule.
  ratios = gaps[-4:-1] / gaps[-3:]
  np.testing.assert_allclose(ratios, 2.0, rtol=0.1)
  print(
    "\nT, discrete diffusion loss (data average):", list(zip(steps, np.round(avg, 4), strict=True))
  )


def test_continuous_elbo_closed_form_is_exact_nll():
  """recon + prior + continuous diffusion -> -log p(x) as the gamma range widens.

  For a truncated range the model differs from the data distribution, so the ELBO
  bounds the data's entropy only on average over x (per x it bounds the model's NLL).
  """
  x = jnp.asarray(X[:, None], jnp.float32)
  nll = -np.asarray(DATA.log_prob(x), np.float64)
  s2, mu = DATA.std**2, DATA.mean
  entropy = 0.5 * math.log(2 * math.pi * s2) + 0.5
  gaps, avg_gaps = [], []
  for g0, g1 in [(-6.0, 3.0), (-13.3, 5.0), (-20.0, 20.0)]:
    recon = 0.5 * (math.log(2 * math.pi) + g0 + 1)
    prior = np.asarray(elbo.prior_loss(x, g1), np.float64)
    diff = np.asarray(DATA.continuous_diffusion_loss(X, g0, g1), np.float64)
    gaps.append(recon + prior + diff - nll)
    # Data average: E d^2 = s^2 makes the diffusion term 1/2 log(w0/w1).
    a2 = 1 / (1 + math.exp(g1))
    prior_avg = 0.5 * (a2 * (s2 + mu**2) + (-math.log1p(-a2) - a2))
    diff_avg = 0.5 * math.log((1 + math.exp(-g0) * s2) / (1 + math.exp(-g1) * s2))
    avg_gaps.append(recon + prior_avg + diff_avg - entropy)
  assert avg_gaps[0] > avg_gaps[1] > 0 and abs(avg_gaps[2]) < 1e-6, avg_gaps
  assert np.all(np.abs(gaps[-1]) < 1e-4), gaps
  assert np.all(np.abs(gaps[0]) > 10 * np.abs(gaps[-1])), gaps


def test_continuous_elbo_monte_carlo_within_error_of_exact_nll():
  """The library's continuous ELBO estimator, by Monte Carlo, against the exact -log p(x)."""
  schedule = schedules.LinearSchedule(-13.3, 13.3)
  n = 1 << 17
  nll = -np.asarray(DATA.log_prob(jnp.asarray(X[:, None], jnp.float32)), np.float64)
  for j, x0 in enumerate(X):
    key_t, key_e0, key_e = jax.random.split(jax.random.key(j), 3)
    x = jnp.full((n, 1), x0, jnp.float32)
    t = times.sample_times(key_t, n)
    gamma, dgamma = schedules.gamma_and_derivative(schedule, t)
    eps = jax.random.normal(key_e, x.shape)
    z = gaussian.q_sample(x, gamma, eps)
    eps_hat = predictions.eps_from_x(z, DATA.x_hat(z, gamma), gamma)
    g0 = schedule(jnp.zeros(()))
    z0 = gaussian.q_sample(x, g0, jax.random.normal(key_e0, x.shape))
    total = (
      testing.gaussian_decoder_nll(x, z0, g0)
      + elbo.prior_loss(x, schedule(jnp.ones(())))
      + elbo.diffusion_loss_continuous(eps, eps_hat, dgamma)
    )
    total = np.asarray(total, np.float64)
    mean, se = total.mean(), total.std() / math.sqrt(n)
    assert se < 0.05, se
    assert abs(mean - nll[j]) < 4 * se, (x0, mean, nll[j], se)
