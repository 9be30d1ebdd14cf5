"""Schedules against float64 NumPy references and finite differences."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import schedules

SCHEDULES = [
  schedules.LinearSchedule(),
  schedules.LinearSchedule(-5.0, 9.0),
  schedules.CosineSchedule(),
  schedules.CosineSchedule(-10.0, 12.0, s=0.0),
  schedules.DDPMLinearSchedule(),
  schedules.DDPMLinearSchedule(1e-4, 0.02, 10),
]


def test_linear_formula():
  s = schedules.LinearSchedule(-13.3, 5.0)
  t = np.linspace(0, 1, 11)
  np.testing.assert_allclose(s(jnp.asarray(t, jnp.float32)), -13.3 + 18.3 * t, rtol=1e-6, atol=1e-5)


def _cosine_gamma_f64(t, s, gamma_min, gamma_max):
  """Improved-DDPM abar(u) = f(u)/f(0) in float64, on the truncated interval."""
  f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2

  def u_of(gamma):  # invert by bisection: independent of the class's closed-form inverse
    lo, hi = 0.0, 1.0
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      g = np.log(f(0) / f(mid) - 1.0)
      lo, hi = (mid, hi) if g < gamma else (lo, mid)
    return 0.5 * (lo + hi)

  u = u_of(gamma_min) + (u_of(gamma_max) - u_of(gamma_min)) * t
  abar = f(u) / f(0)
  return np.log1p(-abar) - np.log(abar)


@pytest.mark.parametrize(
  "s", [schedules.CosineSchedule(), schedules.CosineSchedule(-10.0, 12.0, 0.0)]
)
def test_cosine_matches_improved_ddpm(s):
  t = np.linspace(0.0, 1.0, 101)
  want = _cosine_gamma_f64(t, s.s, s.gamma_min, s.gamma_max)
  got = np.asarray(s(jnp.asarray(t, jnp.float32)), np.float64)
  np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-4)
  assert got[0] == pytest.approx(s.gamma_min, abs=1e-3)
  assert got[-1] == pytest.approx(s.gamma_max, abs=1e-3)


@pytest.mark.parametrize("num_steps", [2, 10, 1000])
def test_ddpm_matches_cumprod_at_every_grid_point(num_steps):
  s = schedules.DDPMLinearSchedule(1e-4, 0.02, num_steps)
  betas = np.linspace(1e-4, 0.02, num_steps)
  abar = np.cumprod(1.0 - betas)  # DDPM's definition, float64
  t = jnp.arange(1, num_steps + 1, dtype=jnp.float32) / num_steps
  got = np.asarray(jax.nn.sigmoid(-s(t)), np.float64)
  np.testing.assert_allclose(got, abar, rtol=2e-5, atol=1e-9)
  # The derivation's per-step alphas from the same schedule compose to DDPM's 1 - beta.
  alpha, alpha_bar = schedules.discrete_alphas(s, num_steps)
  np.testing.assert_allclose(alpha_bar, abar, rtol=2e-5, atol=1e-9)
  np.testing.assert_allclose(alpha[1:], 1.0 - betas[1:], rtol=2e-5)


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_strictly_increasing_and_derivative(schedule):
  t = jnp.linspace(0.0, 1.0, 2001)
  gamma, dgamma = schedules.gamma_and_derivative(schedule, t)
  assert np.all(np.diff(np.asarray(gamma)) > 0)
  assert np.all(np.asarray(dgamma) > 0)
  # Central finite differences of the float32 function, away from DDPM's kinks at i/T.
  if isinstance(schedule, schedules.DDPMLinearSchedule):
    t_mid = np.arange(schedule.num_steps)[:: max(1, schedule.num_steps // 37)] + 0.5
    t_mid = t_mid / schedule.num_steps
    h = 0.2 / schedule.num_steps
  else:
    t_mid, h = np.linspace(0.05, 0.95, 37), 1e-3
  fd = (
    np.asarray(schedule(jnp.asarray(t_mid + h, jnp.float32)), np.float64)
    - np.asarray(schedule(jnp.asarray(t_mid - h, jnp.float32)), np.float64)
  ) / (2 * h)
  _, d = schedules.gamma_and_derivative(schedule, jnp.asarray(t_mid, jnp.float32))
  np.testing.assert_allclose(d, fd, rtol=2e-2)


def test_alpha_sigma_snr():
  g = np.linspace(-20.0, 20.0, 81)
  alpha, sigma = schedules.alpha_sigma(jnp.asarray(g, jnp.float32))
  np.testing.assert_allclose(alpha**2, 1 / (1 + np.exp(g)), rtol=1e-5)
  np.testing.assert_allclose(sigma**2, 1 / (1 + np.exp(-g)), rtol=1e-5)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(schedules.snr(jnp.asarray(g, jnp.float32)), np.exp(-g), rtol=1e-5)
  np.testing.assert_allclose(alpha**2 / sigma**2, np.exp(-g), rtol=1e-5)


def test_discrete_alphas_compose():
  s = schedules.LinearSchedule()
  alpha, alpha_bar = schedules.discrete_alphas(s, 50)
  a0 = 1 / (1 + math.exp(s.gamma_min))  # alpha_0^2 of the VDM's slightly noisy z_0
  np.testing.assert_allclose(np.cumprod(np.asarray(alpha, np.float64)) * a0, alpha_bar, rtol=1e-4)
  t = np.arange(1, 51) / 50
  np.testing.assert_allclose(alpha_bar, 1 / (1 + np.exp(-13.3 + 18.3 * t)), rtol=1e-4)


@pytest.mark.parametrize(
  "kwargs",
  [dict(gamma_min=5.0, gamma_max=-13.3), dict(gamma_min=float("nan"), gamma_max=1.0)],
)
def test_bad_schedule_range(kwargs):
  with pytest.raises(ValueError, match="gamma_min"):
    schedules.LinearSchedule(**kwargs)
  with pytest.raises(ValueError, match="gamma_min"):
    schedules.CosineSchedule(**kwargs)


def test_bad_ddpm_and_t():
  with pytest.raises(ValueError, match="num_steps"):
    schedules.DDPMLinearSchedule(num_steps=1)
  with pytest.raises(ValueError, match="beta_start"):
    schedules.DDPMLinearSchedule(beta_start=0.1, beta_end=0.01)
  with pytest.raises(ValueError, match="`t` must be a floating"):
    schedules.LinearSchedule()(jnp.arange(3))
  with pytest.raises(ValueError, match="num_steps"):
    schedules.discrete_alphas(schedules.LinearSchedule(), 0)
