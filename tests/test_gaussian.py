"""Gaussian algebra against the derivation's formulas, float64 Monte Carlo and KS tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vdm_jax import elbo, gaussian, schedules


def _seed_posterior(x_t, x_0, gamma_s, gamma_t):
  """The derivation's Step 4 in its own notation, float64: abar from the schedule, alpha per step."""
  abar_t = 1 / (1 + np.exp(gamma_t))
  abar_s = 1 / (1 + np.exp(gamma_s))
  alpha_t = abar_t / abar_s  # per-step alpha of the derivation
  mu = (np.sqrt(alpha_t) * (1 - abar_s) * x_t + np.sqrt(abar_s) * (1 - alpha_t) * x_0) / (
    1 - abar_t
  )
  var = (1 - alpha_t) * (1 - abar_s) / (1 - abar_t)
  return mu, var


@pytest.mark.parametrize("num_steps", [1, 10, 1000])
def test_q_posterior_equals_seed_step4(rng, num_steps):
  schedule = schedules.LinearSchedule()
  i = rng.integers(1, num_steps + 1, size=16)
  t, s = i / num_steps, (i - 1) / num_steps
  g_t = np.asarray(schedule(jnp.asarray(t, jnp.float32)), np.float64)
  g_s = np.asarray(schedule(jnp.asarray(s, jnp.float32)), np.float64)
  x = rng.uniform(-1, 1, size=(16, 3, 2))
  z = rng.normal(size=(16, 3, 2))
  mean, var = gaussian.q_posterior(
    jnp.asarray(z, jnp.float32),
    jnp.asarray(x, jnp.float32),
    g_s.astype(np.float32),
    g_t.astype(np.float32),
  )
  want_mu, want_var = _seed_posterior(z, x, g_s[:, None, None], g_t[:, None, None])
  np.testing.assert_allclose(mean, want_mu, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(var, np.broadcast_to(want_var, var.shape), rtol=2e-4, atol=1e-9)


def test_q_posterior_is_bayes_rule_by_monte_carlo():
  """Sample (z_s, z_t) jointly from the forward chain; regress z_s on (z_t, x) in float64."""
  key = jax.random.key(1)
  n = 400_000
  g_s, g_t = -1.0, 0.5
  x = np.asarray(jax.random.uniform(jax.random.key(2), (n,), minval=-1, maxval=1), np.float64)
  a_s2, a_t2 = 1 / (1 + np.exp(g_s)), 1 / (1 + np.exp(g_t))
  e1, e2 = np.asarray(jax.random.normal(key, (2, n)), np.float64)
  z_s = np.sqrt(a_s2) * x + np.sqrt(1 - a_s2) * e1
  a_ts = np.sqrt(a_t2 / a_s2)
  z_t = a_ts * z_s + np.sqrt((1 - a_t2) - a_ts**2 * (1 - a_s2)) * e2
  design = np.stack([z_t, x], axis=1)
  coef, *_ = np.linalg.lstsq(design, z_s, rcond=None)
  resid_var = np.var(z_s - design @ coef)
  ones = jnp.ones((1,))
  m_z, var = gaussian.q_posterior(ones, 0.0 * ones, g_s, g_t)  # coefficient on z_t
  m_x, _ = gaussian.q_posterior(0.0 * ones, ones, g_s, g_t)  # coefficient on x
  np.testing.assert_allclose(coef, [float(m_z[0]), float(m_x[0])], atol=5e-3)
  np.testing.assert_allclose(resid_var, float(var[0]), rtol=1e-2)


@pytest.mark.parametrize(
  "mq,vq,mp,vp", [(0.3, 0.5, -0.2, 1.3), (1.0, 2.0, 1.0, 0.25), (0.0, 1.0, 0.0, 1.0)]
)
def test_gaussian_kl_equals_float64_monte_carlo(mq, vq, mp, vp):
  n = 2_000_000
  z = np.random.default_rng(3).normal(mq, np.sqrt(vq), size=n)
  log_ratio = stats.norm.logpdf(z, mq, np.sqrt(vq)) - stats.norm.logpdf(z, mp, np.sqrt(vp))
  mc, se = log_ratio.mean(), log_ratio.std() / np.sqrt(n)
  kl = float(gaussian.gaussian_kl(mq, vq, mp, vp))
  assert abs(kl - mc) < 5 * se + 1e-6, (kl, mc, se)
  # The test can fail: a KL off by a factor of two lies many standard errors away.
  if kl > 0.05:
    assert abs(2 * kl - mc) > 5 * se


def test_gaussian_kl_equal_variance_is_exact_quadratic():
  kl = gaussian.gaussian_kl(jnp.array([0.1, 2.0]), 1e-6, jnp.array([0.0, 2.0]), 1e-6)
  np.testing.assert_allclose(kl, [0.5 * 0.01 / 1e-6, 0.0], rtol=1e-5)


def test_gaussian_log_prob():
  x = np.linspace(-3, 3, 7)
  np.testing.assert_allclose(
    gaussian.gaussian_log_prob(jnp.asarray(x, jnp.float32), 0.5, 2.0),
    stats.norm.logpdf(x, 0.5, np.sqrt(2.0)),
    rtol=1e-5,
  )


@pytest.mark.parametrize("gamma", [-13.3, -2.0, 0.0, 5.0])
def test_q_sample_distribution_ks(gamma):
  n = 200_000
  x = jnp.full((n, 1), 0.8)
  eps = jax.random.normal(jax.random.key(4), (n, 1))
  z = np.asarray(gaussian.q_sample(x, jnp.full((n,), gamma), eps), np.float64)[:, 0]
  alpha, sigma = np.sqrt(1 / (1 + np.exp(gamma))), np.sqrt(1 / (1 + np.exp(-gamma)))
  # A frozen distribution's cdf: scipy 1.18's kstest(z, "norm", args=(loc, scale)) passes
  # loc and scale on to ndtr, which takes neither.
  assert stats.kstest(z, stats.norm(alpha * 0.8, sigma).cdf).pvalue > 1e-3
  assert abs(z.mean() - alpha * 0.8) < 5 * sigma / np.sqrt(n)
  assert abs(z.var() / sigma**2 - 1) < 0.02
  # Negative control: the derivation's abar (alpha^2) in place of alpha as the mean is rejected.
  if 0.05 < alpha**2 < 0.95:
    assert stats.kstest(z, stats.norm(alpha**2 * 0.8, sigma).cdf).pvalue < 1e-6


def test_q_sample_broadcasts_per_example_gamma():
  x = jnp.ones((3, 4, 4, 2))
  g = jnp.array([-5.0, 0.0, 5.0])
  z = gaussian.q_sample(x, g, jnp.zeros_like(x))
  np.testing.assert_allclose(
    z[:, 0, 0, 0], np.sqrt(1 / (1 + np.exp(np.array([-5.0, 0, 5])))), rtol=1e-6
  )
  z_scalar = gaussian.q_sample(x, 0.0, jnp.zeros_like(x))
  np.testing.assert_allclose(z_scalar, z[1:2].repeat(3, 0), rtol=1e-6)


def test_bad_inputs_name_the_argument():
  x = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="`x` and `eps` must have the same shape"):
    gaussian.q_sample(x, 0.0, jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match=r"`gamma_t` must be a scalar or one value per example"):
    gaussian.q_sample(x, jnp.zeros((4, 1)), x)
  with pytest.raises(ValueError, match=r"`gamma_t`.*shape \(5,\)"):
    gaussian.q_sample(x, jnp.zeros((5,)), x)
  with pytest.raises(ValueError, match="`x` must be a floating array"):
    gaussian.q_sample(jnp.zeros((4, 3), jnp.int32), 0.0, x)
  with pytest.raises(ValueError, match="`z_t` and `x` must have the same shape"):
    gaussian.q_posterior(x, jnp.zeros((4, 2)), -1.0, 0.0)
  with pytest.raises(ValueError, match="`var_p` must be a floating"):
    gaussian.gaussian_kl(0.0, 1.0, 0.0, jnp.ones(3, jnp.int32))
  with pytest.raises(ValueError, match="`k` must be an integer array"):
    elbo.encode(jnp.zeros(3), 256)
