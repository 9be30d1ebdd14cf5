"""Classifier-free guidance and the DPM-Solver++(2M) sampler.

The solver is checked against the exact probability-flow ODE: in closed form for Gaussian
data (the flow is then affine) and, for the Gaussian-mixture oracle, against an adaptive
high-order solve in float64; its global error must fall as the square of the step size.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import models, predictions, sampling, schedules, testing
from vdm_jax.data import toy2d
from vdm_jax.evaluation import ode

diffrax = pytest.importorskip("diffrax")

SCHEDULE = schedules.LinearSchedule(-10.0, 8.0)


def _mixture_oracle(std=toy2d.MIXTURE_STD):
  return testing.OracleVDM(
    SCHEDULE, testing.GaussianMixture(toy2d.MIXTURE_MEANS, std), data_shape=(2,)
  )


def _solve(oracle, z_1, num_steps):
  gammas = oracle.gamma(None, 1.0 - jnp.arange(num_steps + 1) / num_steps)
  return sampling.dpm_solver_2m(lambda z, g: oracle.x_hat(None, z, g), z_1, gammas)


def _exact_ode(oracle, z_1):
  """z_0 of the probability-flow ODE from t = 1 to t = 0, adaptive Dopri8 at 1e-11."""
  sol = diffrax.diffeqsolve(
    diffrax.ODETerm(lambda t, z, args: ode.drift(oracle, None, t, z)),
    diffrax.Dopri8(),
    t0=1.0,
    t1=0.0,
    dt0=-1e-3,
    y0=z_1,
    stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11),
    max_steps=100_000,
  )
  return sol.ys[0]


def test_guidance_is_the_affine_combination():
  key_c, key_n = jax.random.split(jax.random.key(0))
  eps_c, eps_n = jax.random.normal(key_c, (4, 3)), jax.random.normal(key_n, (4, 3))
  np.testing.assert_array_equal(sampling.guided_eps(eps_c, eps_n, 0.0), eps_c)
  np.testing.assert_allclose(
    sampling.guided_eps(eps_c, eps_n, 2.0), 3.0 * eps_c - 2.0 * eps_n, rtol=1e-6
  )
  # w = -1 is the null model; the guided x_hat is the same combination of x_hats.
  np.testing.assert_allclose(sampling.guided_eps(eps_c, eps_n, -1.0), eps_n, rtol=1e-6)
  z, g = jax.random.normal(jax.random.key(1), (4, 3)), jnp.full((4,), 0.5)
  x_c, x_n = predictions.x_from_eps(z, eps_c, g), predictions.x_from_eps(z, eps_n, g)
  x_w = predictions.x_from_eps(z, sampling.guided_eps(eps_c, eps_n, 1.5), g)
  np.testing.assert_allclose(x_w, 2.5 * x_c - 1.5 * x_n, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="guidance"):
    sampling.guided_eps(eps_c, eps_n, jnp.ones(4))
  with pytest.raises(ValueError, match="eps_null"):
    sampling.guided_eps(eps_c, eps_n[:2], 1.0)


def test_first_step_is_ddim():
  oracle = _mixture_oracle()
  z = jax.random.normal(jax.random.key(0), (16, 2))
  g_t, g_s = jnp.array(3.0), jnp.array(1.0)
  x = oracle.x_hat(None, z, g_t)
  eps = predictions.eps_from_x(z, x, g_t)
  alpha_s, sigma_s = schedules.alpha_sigma(g_s)
  ddim = alpha_s * x + sigma_s * eps
  out = sampling.dpm_solver_2m(lambda u, g: oracle.x_hat(None, u, g), z, jnp.stack([g_t, g_s]))
  np.testing.assert_allclose(out, ddim, rtol=1e-5, atol=1e-6)


def test_solver_matches_the_closed_form_flow_of_gaussian_data():
  # For x ~ N(m, s^2) the flow keeps (z_t - alpha_t m) / sqrt(alpha_t^2 s^2 + sigma_t^2).
  m, s = 0.3, 0.2
  with jax.enable_x64(True):
    data = testing.GaussianData(m, s)
    z_1 = jax.random.normal(jax.random.key(0), (8, 3), jnp.float64)

    def exact(g_from, g_to, z):
      (a0, s0), (a1, s1) = schedules.alpha_sigma(g_from), schedules.alpha_sigma(g_to)
      u = (z - a0 * m) / jnp.sqrt(a0**2 * s**2 + s0**2)
      return a1 * m + jnp.sqrt(a1**2 * s**2 + s1**2) * u

    f64 = lambda v: jnp.asarray(v, jnp.float64)
    target = exact(f64(8.0), f64(-10.0), z_1)
    errors = []
    for n in (50, 100, 200):
      out = sampling.dpm_solver_2m(data.x_hat, z_1, jnp.linspace(f64(8.0), f64(-10.0), n + 1))
      errors.append(float(jnp.max(jnp.abs(out - target))))
  assert errors[-1] < 1e-4, errors
  ratios = np.array(errors[:-1]) / np.array(errors[1:])
  assert np.all((ratios > 3.5) & (ratios < 4.5)), (errors, ratios)  # second order


def test_solver_converges_to_the_exact_ode_on_the_mixture_at_second_order():
  with jax.enable_x64(True):
    oracle = _mixture_oracle()
    z_1 = jax.random.normal(jax.random.key(0), (16, 2), jnp.float64)
    target = _exact_ode(oracle, z_1)
    assert target.dtype == jnp.float64
    errors = [float(jnp.max(jnp.abs(_solve(oracle, z_1, n) - target))) for n in (100, 200, 400)]
  assert errors[-1] < 2e-3, errors
  ratios = np.array(errors[:-1]) / np.array(errors[1:])
  assert np.all((ratios > 3.0) & (ratios < 5.0)), (errors, ratios)


class _OracleDenoiser(nn.Module):
  """The mixture's Bayes-optimal denoiser, output as an eps, x or v prediction."""

  prediction: str

  @nn.compact
  def __call__(self, z, gamma, *, train: bool = False, batch=None):
    del train, batch
    scale = self.param("scale", nn.initializers.ones, ())
    x = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD).x_hat(z, gamma)
    eps = predictions.eps_from_x(z, x, gamma)
    out = {"eps": eps, "x": x, "v": predictions.v_from_x_eps(x, eps, gamma)}[self.prediction]
    return scale * out


@pytest.mark.parametrize("prediction", predictions.PARAMETERIZATIONS)
def test_dpm_solver_sample_is_the_same_for_every_prediction(prediction):
  vdm = models.VDM(
    schedule=models.FixedSchedule(SCHEDULE),
    denoiser=_OracleDenoiser(prediction),
    vocab_size=256,
    data_shape=(2,),
    prediction=prediction,
  )
  params = vdm.init(jax.random.key(0))
  key = jax.random.key(1)
  kwargs = {"num_steps": 20, "method": "dpm_solver", "decode": "mode"}
  got = sampling.sample(vdm, params, key, 64, **kwargs)
  want = sampling.sample(_mixture_oracle(), None, key, 64, **kwargs)
  assert np.mean(np.asarray(got) == np.asarray(want)) >= 63 / 64
