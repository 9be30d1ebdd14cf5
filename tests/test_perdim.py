"""Per-dimension gamma (`[B, *data_shape]`) in the pure maths, against independent routes:
float64 NumPy formulas of diagonal Gaussians written dimension by dimension, the `[B]` path
applied to one dimension at a time, closed-form gradients, and the exactness certificate
of a Bayes-optimal denoiser under a non-uniform per-dimension schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import elbo, gaussian, predictions, sampling, schedules, testing
from vdm_jax.data import toy2d
from vdm_jax.evaluation import certify, ode

B, D = 5, 6
KEYS = jax.random.split(jax.random.key(0), 6)
X = jax.random.uniform(KEYS[0], (B, D), minval=-1.0, maxval=1.0)
EPS = jax.random.normal(KEYS[1], (B, D))
EPS_HAT = EPS + 0.3 * jax.random.normal(KEYS[2], (B, D))
G_S = jax.random.uniform(KEYS[3], (B, D), minval=-8.0, maxval=3.0)  # every entry different
G_T = G_S + jax.random.uniform(KEYS[4], (B, D), minval=0.05, maxval=2.0)
DG = jax.random.uniform(KEYS[5], (B, D), minval=1.0, maxval=30.0)


def f64(a):
  return np.asarray(a, np.float64)


def _alpha2_sigma2(g):
  g = f64(g)
  return 1.0 / (1.0 + np.exp(g)), 1.0 / (1.0 + np.exp(-g))


def _kl_diag(mq, vq, mp, vp):
  """KL between diagonal Gaussians, summed over the last axis, float64."""
  return 0.5 * np.sum(np.log(vp / vq) + (vq + np.square(mq - mp)) / vp - 1.0, axis=-1)


def _posterior_f64(z_t, x, g_s, g_t):
  """q(z_s | z_t, x) by the ratio formulas (alpha_{t|s} = alpha_t / alpha_s), float64."""
  a2_s, s2_s = _alpha2_sigma2(g_s)
  a2_t, s2_t = _alpha2_sigma2(g_t)
  a_ts2 = a2_t / a2_s
  s2_ts = s2_t - a_ts2 * s2_s
  mean = np.sqrt(a_ts2) * s2_s / s2_t * f64(z_t) + np.sqrt(a2_s) * s2_ts / s2_t * f64(x)
  return mean, s2_ts * s2_s / s2_t


def test_per_dimension_gamma_equal_across_dimensions_matches_per_example():
  g = G_T[:, 0]  # [B]
  g_map = jnp.broadcast_to(g[:, None], (B, D))
  k = jnp.asarray(np.arange(B * D).reshape(B, D) % 17, jnp.int32)
  z = gaussian.q_sample(X, g, EPS)
  pairs = [
    (gaussian.q_sample(X, g, EPS), gaussian.q_sample(X, g_map, EPS)),
    (gaussian.q_posterior(z, X, g - 1.0, g), gaussian.q_posterior(z, X, g_map - 1.0, g_map)),
    (
      elbo.reconstruction_loss(k, z, g, vocab_size=17),
      elbo.reconstruction_loss(k, z, g_map, vocab_size=17),
    ),
    (elbo.prior_loss(X, g), elbo.prior_loss(X, g_map)),
    (
      elbo.diffusion_loss_continuous(EPS, EPS_HAT, DG[:, 0]),
      elbo.diffusion_loss_continuous(EPS, EPS_HAT, jnp.broadcast_to(DG[:, :1], (B, D))),
    ),
    (
      elbo.diffusion_loss_discrete(EPS, EPS_HAT, g - 1.0, g, num_steps=8),
      elbo.diffusion_loss_discrete(EPS, EPS_HAT, g_map - 1.0, g_map, num_steps=8),
    ),
    (predictions.x_from_eps(z, EPS_HAT, g), predictions.x_from_eps(z, EPS_HAT, g_map)),
  ]
  for want, got in pairs:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=2e-6, atol=1e-7), want, got)


def test_sums_equal_the_per_example_path_dimension_by_dimension():
  """Each `[B]` term with a per-dimension gamma is the sum over d of the same term on the
  one-dimensional data x[:, d] with the per-example gamma[:, d]."""
  k = jnp.asarray((np.arange(B * D).reshape(B, D) * 7) % 17, jnp.int32)
  z_0 = gaussian.q_sample(elbo.encode(k, 17), G_S, EPS)
  cols = lambda a, d: a[:, d : d + 1]
  fns = [
    lambda s, e, eh, gs, gt, dg, kk, z0: elbo.prior_loss(s, gt),
    lambda s, e, eh, gs, gt, dg, kk, z0: elbo.diffusion_loss_continuous(e, eh, dg),
    lambda s, e, eh, gs, gt, dg, kk, z0: elbo.diffusion_loss_discrete(e, eh, gs, gt, num_steps=3),
    lambda s, e, eh, gs, gt, dg, kk, z0: elbo.reconstruction_loss(kk, z0, gs, vocab_size=17),
    lambda s, e, eh, gs, gt, dg, kk, z0: elbo.denoising_matching_kl(s, e, eh, gs, gt),
  ]
  for fn in fns:
    whole = fn(X, EPS, EPS_HAT, G_S, G_T, DG, k, z_0)
    by_dim = sum(
      fn(*(cols(a, d) for a in (X, EPS, EPS_HAT)), G_S[:, d], G_T[:, d], DG[:, d], cols(k, d),
         cols(z_0, d))
      for d in range(D)
    )  # fmt: skip
    assert whole.shape == (B,)
    np.testing.assert_allclose(whole, by_dim, rtol=1e-5)


def test_gaussian_algebra_per_dimension_against_float64():
  z_t = gaussian.q_sample(X, G_T, EPS)
  a2_t, s2_t = _alpha2_sigma2(G_T)
  np.testing.assert_allclose(z_t, np.sqrt(a2_t) * f64(X) + np.sqrt(s2_t) * f64(EPS), rtol=1e-5)
  mean, var = gaussian.q_posterior(z_t, X, G_S, G_T)
  mean64, var64 = _posterior_f64(z_t, X, G_S, G_T)
  np.testing.assert_allclose(mean, mean64, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(var, var64, rtol=1e-4)


def test_prior_and_decoder_per_dimension_against_float64():
  a2, s2 = _alpha2_sigma2(G_T)
  want = _kl_diag(np.sqrt(a2) * f64(X), s2, 0.0, 1.0)  # KL(q(z_1|x) || N(0, I)) directly
  np.testing.assert_allclose(elbo.prior_loss(X, G_T), want, rtol=1e-5)
  vocab = 17
  z_0 = gaussian.q_sample(X, G_S, EPS)
  a2_0, _ = _alpha2_sigma2(G_S)
  centres = (2 * np.arange(vocab) + 1.0) / vocab - 1.0
  logits64 = (
    -0.5
    * np.exp(-f64(G_S))[..., None]
    * np.square(f64(z_0)[..., None] / np.sqrt(a2_0)[..., None] - centres)
  )
  norm = lambda v: (
    v
    - np.log(np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - (v.max(-1, keepdims=True))
  )
  got = f64(elbo.decoder_logits(z_0, G_S, vocab_size=vocab))
  np.testing.assert_allclose(norm(got), norm(logits64), atol=2e-4)


def test_diffusion_losses_per_dimension_against_float64():
  cont = elbo.diffusion_loss_continuous(EPS, EPS_HAT, DG)
  want = 0.5 * np.sum(f64(DG) * np.square(f64(EPS) - f64(EPS_HAT)), axis=-1)
  np.testing.assert_allclose(cont, want, rtol=1e-5)
  # Discrete: T times the KL between the two diagonal posteriors, computed directly.
  num_steps = 7
  z_t = gaussian.q_sample(X, G_T, EPS)
  x_hat = predictions.x_from_eps(z_t, EPS_HAT, G_T)
  mq, vq = _posterior_f64(z_t, X, G_S, G_T)
  mp, vp = _posterior_f64(z_t, x_hat, G_S, G_T)
  got = elbo.diffusion_loss_discrete(EPS, EPS_HAT, G_S, G_T, num_steps=num_steps)
  np.testing.assert_allclose(got / num_steps, _kl_diag(mq, vq, mp, vp), rtol=2e-3)
  # A factor of 2 or a swapped pair of gammas is far outside that tolerance.
  assert np.all(f64(got) > 0)


def test_per_dimension_under_jit_vmap_and_grad():
  loss = lambda e, eh, gs, gt: elbo.diffusion_loss_discrete(e, eh, gs, gt, num_steps=4)
  eager = loss(EPS, EPS_HAT, G_S, G_T)
  np.testing.assert_allclose(jax.jit(loss)(EPS, EPS_HAT, G_S, G_T), eager, rtol=1e-6)
  one = jax.vmap(lambda *a: loss(*(v[None] for v in a))[0])
  np.testing.assert_allclose(one(EPS, EPS_HAT, G_S, G_T), eager, rtol=1e-6)
  # d/d gamma'_d of the continuous loss is 1/2 (eps_d - eps_hat_d)^2, dimension by dimension.
  grad = jax.grad(lambda dg: elbo.diffusion_loss_continuous(EPS, EPS_HAT, dg).sum())(DG)
  np.testing.assert_allclose(grad, 0.5 * np.square(f64(EPS) - f64(EPS_HAT)), rtol=1e-6)
  # d/d gamma_1,d of the prior KL: 1/2 alpha^2 sigma^2 (1 - x^2) - 1/2 alpha^2.
  grad = jax.grad(lambda g: elbo.prior_loss(X, g).sum())(G_T)
  a2, s2 = _alpha2_sigma2(G_T)
  want = 0.5 * a2 * s2 * (1.0 - np.square(f64(X))) - 0.5 * a2
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)


def test_a_gamma_of_the_wrong_shape_is_refused():
  with pytest.raises(ValueError, match=r"`gamma_t`.*one value per data dimension.*\(5, 7\)"):
    gaussian.q_sample(X, jnp.zeros((B, D + 1)), EPS)
  with pytest.raises(ValueError, match=r"`dgamma_dt`"):
    elbo.diffusion_loss_continuous(EPS, EPS_HAT, jnp.zeros((B, 1)))


def test_square_polynomial_schedule_matches_quadrature_and_its_derivative():
  coeffs = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)) * 2.0, jnp.float32)
  t = jnp.linspace(0.0, 1.0, 11)[:, None]
  gamma, dgamma = schedules.square_polynomial_gamma(coeffs, t, gamma_min=-7.0, gamma_max=4.0)
  u = np.linspace(0.0, 1.0, 20001)
  c = np.asarray(coeffs, np.float64)
  integrand = np.square(c[:, 0] * u[:, None] ** 2 + c[:, 1] * u[:, None] + c[:, 2]) + 1e-3
  cum = np.concatenate([np.zeros((1, 4)), np.cumsum((integrand[1:] + integrand[:-1]) / 2, 0)])
  cum /= u.size - 1
  want = -7.0 + 11.0 * cum[::2000] / cum[-1]
  np.testing.assert_allclose(gamma, want, atol=1e-4)
  _, jvp = schedules.gamma_and_derivative(
    lambda s: schedules.square_polynomial_gamma(coeffs, s, gamma_min=-7.0, gamma_max=4.0)[0],
    jnp.broadcast_to(t, (11, 4)),
  )
  np.testing.assert_allclose(dgamma, jvp, rtol=1e-4)
  assert np.all(np.asarray(dgamma) > 0)


# ---------------------------------------------------------------------------
# The Bayes-optimal denoiser and the exactness certificate with a per-dimension schedule.
# ---------------------------------------------------------------------------

MIXTURE = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
# Two dimensions with visibly different curves: one concave, one convex in t.
PER_DIM = testing.PerDimensionSchedule(np.array([[0.0, -2.0, 2.0], [3.0, 0.0, 0.2]]), -13.3, 13.3)


def test_mixture_denoiser_per_dimension_is_the_posterior_mean():
  """E[x | z] of the mixture under a diagonal process against self-normalised importance
  weights computed in float64 from the prior's components (an independent route)."""
  gamma = PER_DIM(jnp.full((3,), 0.55))  # [3, 2], different per dimension
  z = jnp.asarray([[0.2, -0.4], [1.0, 0.3], [-0.7, 0.9]], jnp.float32)
  got = MIXTURE.x_hat(z, gamma)
  a2, s2 = _alpha2_sigma2(gamma)
  rng = np.random.default_rng(0)
  comp = rng.integers(0, MIXTURE.means.shape[0], 200_000)
  xs = MIXTURE.means[comp] + MIXTURE.std * rng.normal(size=(comp.size, 2))
  for i in range(3):
    logw = -0.5 * np.sum(np.square(f64(z[i]) - np.sqrt(a2[i]) * xs) / s2[i], axis=-1)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    mean = (w[:, None] * xs).sum(0)
    se = np.sqrt((np.square(w)[:, None] * np.square(xs - mean)).sum(0))  # of the ratio estimate
    assert np.all(np.abs(f64(got[i]) - mean) < 5 * se + 1e-4), (got[i], mean, se)
  assert not np.allclose(got, MIXTURE.x_hat(z, gamma.mean(-1)), atol=1e-2)  # it matters


def test_certificate_holds_for_a_per_dimension_schedule():
  rows = certify.certify(
    jax.random.key(0),
    MIXTURE,
    toy2d.sample(128, 3),
    PER_DIM,
    steps=(4, 64),
    num_samples=4,
    continuous_samples=256,
  )
  (t4, t64, cont) = rows
  assert t4["gap"] > t64["gap"] > 3 * t64["gap_se"], rows
  # The diffusion term is ~10 nats: a wrong weighting of any dimension is far outside this.
  assert abs(cont["gap"]) < 4 * cont["gap_se"] + 0.02, cont
  assert cont["gap_se"] < 0.2


def _per_dim_oracle():
  schedule = testing.PerDimensionSchedule(PER_DIM.coeffs, -13.3, 10.0)
  return testing.OracleVDM(schedule, MIXTURE, (2,))


@pytest.mark.slow
def test_ode_likelihood_with_a_per_dimension_schedule_is_exact():
  x = jnp.asarray(toy2d.sample(32, 5), jnp.float32)
  nll = ode.nll_continuous(_per_dim_oracle(), None, x, jax.random.key(0), exact_divergence=True)
  assert np.max(np.abs(f64(nll) - (-f64(MIXTURE.log_prob(x))))) < 0.01


def test_sampler_with_a_per_dimension_schedule_lands_on_the_data():
  k = sampling.sample(_per_dim_oracle(), None, jax.random.key(1), 1000, num_steps=50)
  xs = (2 * np.asarray(k, np.float64) + 1) / 256 - 1
  nearest = np.linalg.norm(xs[:, None] - MIXTURE.means[None], axis=-1).min(-1)
  assert np.quantile(nearest, 0.9) < 4 * MIXTURE.std + 2 / 256, np.quantile(nearest, 0.9)
  assert math.isclose(xs.mean(), MIXTURE.means.mean(), abs_tol=0.1)
