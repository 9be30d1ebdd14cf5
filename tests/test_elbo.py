"""ELBO terms against float64 NumPy references of the derivation's and the VDM paper's formulas."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vdm_jax import elbo, gaussian, predictions, schedules, times


def _sig(x):
  return 1 / (1 + np.exp(-x))


def test_encode_and_bits_per_dim():
  np.testing.assert_allclose(
    elbo.encode(jnp.array([0, 1, 255]), 256), [-255 / 256, -253 / 256, 255 / 256]
  )
  np.testing.assert_allclose(
    elbo.encode(jnp.arange(17), 17), (2 * np.arange(17) + 1) / 17 - 1, rtol=1e-6
  )
  np.testing.assert_allclose(elbo.bits_per_dim(jnp.array([64 * math.log(2)]), 64), [1.0], rtol=1e-6)
  with pytest.raises(ValueError, match="num_dims"):
    elbo.bits_per_dim(1.0, 0)
  with pytest.raises(ValueError, match="vocab_size"):
    elbo.encode(jnp.arange(3), 1)


def _vdm_reference_recon(k, z0, g0, vocab):
  """The published VDM decoder in float64: logits over bin centres of z_0/alpha_0."""
  a0 = np.sqrt(_sig(-g0))
  centres = (2 * np.arange(vocab) + 1) / vocab - 1
  logits = -0.5 * (z0[..., None] / a0 - centres) ** 2 / np.exp(g0)
  logits -= logits.max(-1, keepdims=True)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, k[..., None], -1)[..., 0].reshape(k.shape[0], -1).sum(-1)


@pytest.mark.parametrize(
  "shape,vocab,g0", [((4, 8, 8, 1), 17, -5.0), ((3, 4, 4, 3), 256, -13.3), ((5, 7), 256, -8.0)]
)
def test_reconstruction_matches_reference(rng, shape, vocab, g0):
  k = rng.integers(0, vocab, size=shape)
  x = (2 * k + 1) / vocab - 1
  eps = rng.normal(size=shape)
  z0 = np.sqrt(_sig(-g0)) * x + np.sqrt(_sig(g0)) * eps
  got = elbo.reconstruction_loss(jnp.asarray(k), jnp.asarray(z0, jnp.float32), g0, vocab_size=vocab)
  assert got.shape == (shape[0],)
  np.testing.assert_allclose(got, _vdm_reference_recon(k, z0, g0, vocab), rtol=2e-4, atol=1e-3)


def test_decoder_probabilities_sum_to_one(rng):
  z0 = jnp.asarray(rng.normal(size=(2, 3, 3, 3)), jnp.float32)
  for vocab, g0 in [(256, -13.3), (17, 0.0), (2, 5.0)]:
    logits = elbo.decoder_logits(z0, jnp.array([g0, g0 + 1]), vocab_size=vocab)
    assert logits.shape == (2, 3, 3, 3, vocab)
    p = jax.nn.softmax(logits, axis=-1)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    # The loss of each value k is -log p(k): summing exp(-loss) over all k is 1 too.
    per_k = jnp.stack(
      [
        elbo.reconstruction_loss(jnp.full((1, 1), j), z0[:1, :1, 0, 0], g0, vocab_size=vocab)
        for j in range(vocab)
      ]
    )
    np.testing.assert_allclose(jnp.exp(-per_k).sum(), 1.0, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_clean_latent_decodes_with_near_zero_loss(rng, channels):
  k = jnp.asarray(rng.integers(0, 256, size=(2, 8, 8, channels)))
  x = elbo.encode(k, 256)
  alpha0, _ = schedules.alpha_sigma(-13.3)
  loss = elbo.reconstruction_loss(k, alpha0 * x, -13.3, vocab_size=256)
  assert np.all(np.asarray(loss) < 1e-4 * 64 * channels)
  # A latent shifted by one bin is confidently wrong: the loss is large, not near 0.
  shifted = elbo.reconstruction_loss(k, alpha0 * (x + 2 / 256), -13.3, vocab_size=256)
  assert np.all(np.asarray(shifted) > 10 * 64 * channels)


@pytest.mark.parametrize("g1", [-2.0, 5.0, 12.0, 20.0])
def test_prior_loss(rng, g1):
  x = rng.uniform(-1, 1, size=(3, 4, 4, 3))
  a2, s2 = _sig(-g1), _sig(g1)
  # Reference: -log1p(-a2) - a2 = sigma^2 - 1 - log sigma^2, accurate in float64.
  want = (0.5 * (a2 * x**2 + (-np.log1p(-a2) - a2))).reshape(3, -1).sum(-1)
  got = elbo.prior_loss(jnp.asarray(x, jnp.float32), g1)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  # Independent route: the analytic Gaussian KL of q(z_1|x) against N(0, I).
  via_kl = gaussian.gaussian_kl(np.sqrt(a2) * x, s2, 0.0, 1.0).reshape(3, -1).sum(-1)
  if g1 < 12:
    np.testing.assert_allclose(got, via_kl, rtol=1e-3)


def test_denoising_matching_kl_identities(rng):
  b, schedule, num_steps = 8, schedules.LinearSchedule(), 100
  i = rng.integers(1, num_steps + 1, size=b)
  g_t = schedule(jnp.asarray(i / num_steps, jnp.float32))
  g_s = schedule(jnp.asarray((i - 1) / num_steps, jnp.float32))
  x = jnp.asarray(rng.uniform(-1, 1, size=(b, 4, 4, 3)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  z_t = gaussian.q_sample(x, g_t, eps)
  x_hat = x + 0.1 * jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  kl = elbo.denoising_matching_kl(x, x_hat, z_t, g_s, g_t)
  # 1/2 (SNR(s) - SNR(t)) ||x - x_hat||^2 in float64.
  gs, gt = np.asarray(g_s, np.float64), np.asarray(g_t, np.float64)
  sq = np.square(np.asarray(x, np.float64) - np.asarray(x_hat, np.float64)).reshape(b, -1).sum(-1)
  np.testing.assert_allclose(kl, 0.5 * (np.exp(-gs) - np.exp(-gt)) * sq, rtol=2e-3)
  # The epsilon form, divided by T.
  eps_hat = predictions.eps_from_x(z_t, x_hat, g_t)
  disc = elbo.diffusion_loss_discrete(eps, eps_hat, g_s, g_t, num_steps=num_steps)
  np.testing.assert_allclose(disc / num_steps, kl, rtol=2e-3)


def test_diffusion_loss_continuous_reference_and_limit(rng):
  b = 6
  eps = jnp.asarray(rng.normal(size=(b, 5, 2)), jnp.float32)
  eps_hat = eps + 0.3 * jnp.asarray(rng.normal(size=eps.shape), jnp.float32)
  t = jnp.asarray(rng.uniform(0.01, 1, size=b), jnp.float32)
  schedule = schedules.CosineSchedule()
  g, dg = schedules.gamma_and_derivative(schedule, t)
  got = elbo.diffusion_loss_continuous(eps, eps_hat, dg)
  sq = np.square(np.asarray(eps - eps_hat, np.float64)).reshape(b, -1).sum(-1)
  np.testing.assert_allclose(got, 0.5 * np.asarray(dg, np.float64) * sq, rtol=1e-5)
  # T expm1(gamma_t - gamma_s) -> gamma'(t) as the step 1/T shrinks.
  errs = []
  for num_steps in [10, 100, 1000, 10_000]:
    g_s = schedule(t - 1.0 / num_steps)
    disc = elbo.diffusion_loss_discrete(eps, eps_hat, g_s, g, num_steps=num_steps)
    errs.append(float(jnp.max(jnp.abs(disc / got - 1))))
  assert errs[-1] < 2e-2, errs
  assert errs[0] > 3 * errs[1] > 9 * errs[2], errs


def test_vdm_published_formulas_float32():
  """The three terms equal the VDM paper's code formulas (float64) on the same inputs."""
  rng = np.random.default_rng(7)
  k = rng.integers(0, 256, size=(4, 6, 6, 3))
  x = (2 * k + 1) / 256 - 1
  g0, g1, gt, dg = -13.3, 5.0, rng.uniform(-13, 5, size=4), 18.3
  eps, eps_hat = rng.normal(size=(2,) + k.shape)
  z0 = np.sqrt(_sig(-g0)) * x + np.sqrt(_sig(g0)) * eps
  # prior: 0.5 * sum(mean1^2 + var1 - log var1 - 1)
  var1 = _sig(g1)
  mean1_sq = _sig(-g1) * x**2
  want_prior = 0.5 * (mean1_sq + var1 - np.log(var1) - 1).reshape(4, -1).sum(-1)
  want_diff = 0.5 * dg * ((eps - eps_hat) ** 2).reshape(4, -1).sum(-1)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  np.testing.assert_allclose(elbo.prior_loss(f32(x), g1), want_prior, rtol=1e-4)
  np.testing.assert_allclose(
    elbo.diffusion_loss_continuous(f32(eps), f32(eps_hat), dg), want_diff, rtol=1e-5
  )
  np.testing.assert_allclose(
    elbo.reconstruction_loss(jnp.asarray(k), f32(z0), g0, vocab_size=256),
    _vdm_reference_recon(k, z0, g0, 256),
    rtol=1e-3,
    atol=1e-3,
  )
  del gt


def test_sample_times_continuous_antithetic():
  t = np.asarray(times.sample_times(jax.random.key(0), 64))
  assert t.shape == (64,) and t.dtype == np.float32
  assert np.all((t > 0) & (t <= 1))
  # One draw in each of the 64 strata of [0, 1).
  np.testing.assert_array_equal(np.sort(np.floor((1 - t) * 64)), np.arange(64))
  # Marginally uniform: pool the first element over many keys.
  keys = jax.random.split(jax.random.key(1), 20_000)
  first = np.asarray(jax.vmap(lambda k: times.sample_times(k, 8)[3])(keys))
  assert stats.kstest(first, "uniform").pvalue > 1e-3
  iid = np.asarray(jax.vmap(lambda k: times.sample_times(k, 8, antithetic=False))(keys)).ravel()
  assert stats.kstest(iid, "uniform").pvalue > 1e-3


@pytest.mark.parametrize("num_steps", [1, 7, 1000])
def test_sample_times_discrete(num_steps):
  keys = jax.random.split(jax.random.key(2), 2000)
  t = np.asarray(jax.vmap(lambda k: times.sample_times(k, 16, num_steps=num_steps))(keys)).ravel()
  i = np.round(t * num_steps)
  np.testing.assert_allclose(t * num_steps, i, atol=1e-3)
  assert i.min() >= 1 and i.max() <= num_steps
  if num_steps == 7:
    counts = np.bincount(i.astype(int), minlength=8)[1:]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_prediction_conversions_round_trip(rng):
  x = jnp.asarray(rng.uniform(-1, 1, size=(4, 3, 3, 2)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  g = jnp.array([-10.0, -2.0, 1.0, 6.0])
  z = gaussian.q_sample(x, g, eps)
  v = predictions.v_from_x_eps(x, eps, g)
  np.testing.assert_allclose(predictions.x_from_eps(z, eps, g), x, atol=2e-3)
  np.testing.assert_allclose(predictions.eps_from_x(z, x, g), eps, atol=2e-3)
  np.testing.assert_allclose(predictions.x_from_v(z, v, g), x, atol=1e-5)
  np.testing.assert_allclose(predictions.eps_from_v(z, v, g), eps, atol=1e-5)
  for p, pred in [("eps", eps), ("x", x), ("v", v)]:
    np.testing.assert_allclose(
      predictions.prediction_to_eps(pred, z, g, parameterization=p), eps, atol=2e-3
    )
  with pytest.raises(ValueError, match="Unknown parameterization 'score'"):
    predictions.prediction_to_eps(x, z, g, parameterization="score")
