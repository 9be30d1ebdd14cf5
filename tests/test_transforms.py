"""Every public pure function under jit, vmap and grad, and stable over the gamma range."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import elbo, gaussian, predictions, schedules, times

B, SHAPE = 3, (3, 4, 4, 2)
_r = np.random.default_rng(0)
X = jnp.asarray(_r.uniform(-1, 1, SHAPE), jnp.float32)
EPS = jnp.asarray(_r.normal(size=SHAPE), jnp.float32)
EPS_HAT = jnp.asarray(_r.normal(size=SHAPE), jnp.float32)
K = jnp.asarray(_r.integers(0, 17, SHAPE))
G_S = jnp.array([-10.0, -1.0, 2.0])
G_T = jnp.array([-9.0, 0.5, 4.0])

# name -> (function, args, index of the float argument to differentiate)
CASES = {
  "LinearSchedule": (schedules.LinearSchedule(), (jnp.array([0.1, 0.5, 1.0]),), 0),
  "CosineSchedule": (schedules.CosineSchedule(), (jnp.array([0.1, 0.5, 0.9]),), 0),
  # Mid-cell points: the finite difference below must not straddle a grid kink.
  "DDPMLinearSchedule": (
    schedules.DDPMLinearSchedule(num_steps=100),
    (jnp.array([0.005, 0.505, 0.905]),),
    0,
  ),
  "alpha_sigma": (lambda g: jnp.stack(schedules.alpha_sigma(g)), (G_T,), 0),
  "snr": (schedules.snr, (G_T,), 0),
  "q_sample": (gaussian.q_sample, (X, G_T, EPS), 1),
  "q_posterior": (lambda *a: jnp.stack(gaussian.q_posterior(*a)), (EPS, X, G_S, G_T), 2),
  "gaussian_kl": (gaussian.gaussian_kl, (X, 0.5, EPS, 2.0), 0),
  "gaussian_log_prob": (gaussian.gaussian_log_prob, (X, EPS, 0.3), 0),
  "encode": (lambda k: elbo.encode(k, 17), (K,), None),
  "decoder_logits": (lambda z, g: elbo.decoder_logits(z, g, vocab_size=17), (X, G_S), 1),
  "reconstruction_loss": (
    lambda z, g: elbo.reconstruction_loss(K, z, g, vocab_size=17),
    (X, G_S),
    1,
  ),
  "prior_loss": (elbo.prior_loss, (X, G_T), 1),
  "diffusion_loss_continuous": (elbo.diffusion_loss_continuous, (EPS, EPS_HAT, G_T), 1),
  "diffusion_loss_discrete": (
    lambda *a: elbo.diffusion_loss_discrete(*a, num_steps=100),
    (EPS, EPS_HAT, G_S, G_T),
    3,
  ),
  "denoising_matching_kl": (elbo.denoising_matching_kl, (X, EPS_HAT, EPS, G_S, G_T), 4),
  "x_from_eps": (predictions.x_from_eps, (EPS, EPS_HAT, G_T), 2),
  "eps_from_x": (predictions.eps_from_x, (EPS, X, G_T), 2),
  "v_from_x_eps": (predictions.v_from_x_eps, (X, EPS, G_T), 2),
  "x_from_v": (predictions.x_from_v, (EPS, EPS_HAT, G_T), 2),
  "eps_from_v": (predictions.eps_from_v, (EPS, EPS_HAT, G_T), 2),
  "bits_per_dim": (lambda n: elbo.bits_per_dim(n, 32), (G_T,), 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_jit_vmap_grad_match_eager(name):
  fn, args, diff_arg = CASES[name]
  eager = fn(*args)
  np.testing.assert_allclose(jax.jit(fn)(*args), eager, rtol=1e-5, atol=1e-6)
  # vmap over a new leading axis of two stacked copies (second copy perturbed).
  stacked = [jnp.stack([a, a * 1.0 if isinstance(a, float) else a]) for a in args]
  batched = jax.vmap(fn)(*stacked)
  np.testing.assert_allclose(batched[0], eager, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(batched[1], eager, rtol=1e-5, atol=1e-6)
  if diff_arg is None:
    return

  def scalar(v):
    a = list(args)
    a[diff_arg] = v
    return jnp.sum(fn(*a))

  v0 = jnp.asarray(args[diff_arg], jnp.float32)
  g = jax.grad(scalar)(v0)
  g_jit = jax.jit(jax.grad(scalar))(v0)
  np.testing.assert_allclose(g_jit, g, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(g))
  # Directional finite difference in float64 arithmetic of the float32 function.
  d = jnp.asarray(np.random.default_rng(1).normal(size=v0.shape), jnp.float32)
  h = 1e-3
  fd = (float(scalar(v0 + h * d)) - float(scalar(v0 - h * d))) / (2 * h)
  np.testing.assert_allclose(float(jnp.sum(g * d)), fd, rtol=3e-2, atol=1e-3 * (1 + abs(fd)))


GAMMAS = jnp.linspace(-20.0, 20.0, 9)


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


def test_stable_over_gamma_range_values_and_gradients():
  x = jnp.broadcast_to(X[:1], (9,) + SHAPE[1:])
  eps = jnp.broadcast_to(EPS[:1], x.shape)
  k = jnp.broadcast_to(K[:1], x.shape)

  def total(g):
    g_s = g - 0.5
    z = gaussian.q_sample(x, g, eps)
    eps_hat = eps * 0.9
    out = [
      elbo.reconstruction_loss(k, z, g, vocab_size=17),
      elbo.reconstruction_loss(k, z, g, vocab_size=256),
      elbo.prior_loss(x, g),
      elbo.diffusion_loss_continuous(eps, eps_hat, jnp.ones_like(g)),
      elbo.diffusion_loss_discrete(eps, eps_hat, g_s, g, num_steps=1),
      elbo.diffusion_loss_discrete(eps, eps_hat, g - 1e-4, g, num_steps=100_000),
      elbo.denoising_matching_kl(x, predictions.x_from_eps(z, eps_hat, g), z, g_s, g),
      predictions.x_from_eps(z, eps_hat, g).sum((1, 2, 3)),
      predictions.eps_from_x(z, x, g).sum((1, 2, 3)),
      gaussian.q_posterior(z, x, g_s, g)[1].sum((1, 2, 3)),
    ]
    return jnp.stack(out)

  values = total(GAMMAS)
  assert _finite(values), values
  jac = jax.jacrev(lambda g: total(g).sum())(GAMMAS)
  assert _finite(jac), jac
  assert np.all(np.asarray(values[:7]) >= 0)


@pytest.mark.parametrize(
  "schedule",
  [schedules.LinearSchedule(), schedules.CosineSchedule(), schedules.DDPMLinearSchedule()],
  ids=repr,
)
@pytest.mark.parametrize("num_steps", [0, 1, 100_000])
def test_full_loss_at_t_endpoints(schedule, num_steps):
  """The three terms and their gradients at t = 0 and t = 1 (and just inside) are finite."""
  t = (
    jnp.array([0.0, 1e-6, 1.0 - 1e-6, 1.0]) if num_steps == 0 else jnp.array([1.0 / num_steps, 1.0])
  )
  b = t.shape[0]
  x = jnp.broadcast_to(X[:1], (b,) + SHAPE[1:])
  k = jnp.broadcast_to(K[:1], x.shape)
  eps = jnp.broadcast_to(EPS[:1], x.shape)

  def loss(t):
    g, dg = schedules.gamma_and_derivative(schedule, t)
    z = gaussian.q_sample(x, g, eps)
    eps_hat = 0.5 * z
    if num_steps:
      diff = elbo.diffusion_loss_discrete(
        eps, eps_hat, schedule(t - 1.0 / num_steps), g, num_steps=num_steps
      )
    else:
      diff = elbo.diffusion_loss_continuous(eps, eps_hat, dg)
    g0, g1 = schedule(jnp.zeros(())), schedule(jnp.ones(()))
    z0 = gaussian.q_sample(x, g0, eps)
    return elbo.reconstruction_loss(k, z0, g0, vocab_size=17) + elbo.prior_loss(x, g1) + diff

  assert _finite(loss(t))
  assert _finite(jax.grad(lambda t: loss(t).sum())(t))


def test_discrete_alphas_extremes():
  for num_steps in [1, 100_000]:
    alpha, alpha_bar = schedules.discrete_alphas(schedules.LinearSchedule(-20.0, 20.0), num_steps)
    assert _finite((alpha, alpha_bar))
    assert np.all((np.asarray(alpha) > 0) & (np.asarray(alpha) <= 1))


@pytest.mark.parametrize(
  "call,match",
  [
    (
      lambda: elbo.reconstruction_loss(K.astype(jnp.float32), X, 0.0, vocab_size=17),
      "`k` must be an integer",
    ),
    (
      lambda: elbo.reconstruction_loss(K, X[:, :2], 0.0, vocab_size=17),
      "`k` and `z_0` must have the same shape",
    ),
    (lambda: elbo.reconstruction_loss(K, X, jnp.zeros(4), vocab_size=17), r"`gamma_0`.*\(3,\)"),
    (lambda: elbo.decoder_logits(X, 0.0, vocab_size=256.0), "vocab_size"),
    (lambda: elbo.prior_loss(jnp.float32(1.0), 0.0), "`x` must have a leading batch axis"),
    (lambda: elbo.prior_loss(X, jnp.zeros((3, 1))), "`gamma_1` must be a scalar or one value"),
    (lambda: elbo.diffusion_loss_continuous(EPS, EPS_HAT[:2], 1.0), "`eps` and `eps_hat`"),
    (
      lambda: elbo.diffusion_loss_continuous(EPS, EPS_HAT.astype(jnp.int32), 1.0),
      "`eps_hat` must be a floating",
    ),
    (lambda: elbo.diffusion_loss_discrete(EPS, EPS_HAT, G_S, G_T, num_steps=0), "num_steps"),
    (lambda: elbo.diffusion_loss_discrete(EPS, EPS_HAT, G_S, G_T, num_steps=10.0), "num_steps"),
    (
      lambda: elbo.denoising_matching_kl(X, X[:2], EPS, G_S, G_T),
      "`z_t` and `x` must have the same shape",
    ),
    (lambda: times.sample_times(jax.random.key(0), 0), "batch_size"),
    (lambda: times.sample_times(jax.random.key(0), 4, num_steps=-1), "num_steps"),
    (lambda: predictions.x_from_eps(EPS, EPS_HAT[:, :1], G_T), "`z_t` and `eps_hat`"),
    (lambda: predictions.v_from_x_eps(X, EPS, jnp.zeros(2)), r"`gamma_t`.*\(2,\)"),
  ],
)
def test_bad_input_raises_value_error_naming_it(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_checks_run_under_jit():
  with pytest.raises(ValueError, match="`eps` and `eps_hat`"):
    jax.jit(elbo.diffusion_loss_continuous)(EPS, EPS_HAT[:2], 1.0)
