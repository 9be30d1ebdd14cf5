"""The derivation's two ELBO forms (and the plain sampled ELBO) on a Gaussian example.

The forms are estimated from shared forward trajectories, so paired differences have
small standard errors and a biased form stands out by many of them.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import hvae, schedules, testing

DATA = testing.GaussianData(0.3, 0.5)
X = jnp.asarray([[0.3 - 0.75, 1.0, 0.0, 0.5]], jnp.float32)
SCHEDULE = schedules.LinearSchedule(-6.0, 6.0)
NUM_STEPS = 16
NUM_KEYS = 4000
MODELS = {
  "bayes-optimal": DATA.x_hat,
  "0.5 x optimal": lambda z, g: 0.5 * DATA.x_hat(z, g),
  "zero (untrained)": lambda z, g: jnp.zeros_like(z),
}
FORMS = {
  "denoising": hvae.negative_elbo_denoising,
  "consistency": hvae.negative_elbo_consistency,
  "sampled": hvae.negative_elbo_sampled,
  "seed literal": lambda *a: hvae.negative_elbo_consistency(*a, bridge=False),
}


def _one(form, model, key):
  return form(key, X, model, SCHEDULE, NUM_STEPS, testing.gaussian_decoder_nll)


@pytest.fixture(scope="module")
def estimates():
  keys = jax.random.split(jax.random.key(0), NUM_KEYS)
  out = {}
  for m_name, model in MODELS.items():
    for f_name, form in FORMS.items():
      f = jax.jit(jax.vmap(functools.partial(_one, form, model)))
      out[m_name, f_name] = np.asarray(f(keys), np.float64)[:, 0]
  print(f"\n-ELBO estimators, N={NUM_STEPS} steps, gamma in [-6, 6], {NUM_KEYS} samples:")
  for m_name in MODELS:
    row = ", ".join(
      f"{f}: mean {out[m_name, f].mean():.3f} var {out[m_name, f].var():.3f}" for f in FORMS
    )
    print(f"  {m_name:18s} {row}")
  return out


def _paired(estimates, model, a, b):
  d = estimates[model, a] - estimates[model, b]
  return d.mean(), d.std() / np.sqrt(d.size)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("form", ["consistency", "sampled"])
def test_forms_agree_in_mean(estimates, model, form):
  mean, se = _paired(estimates, model, form, "denoising")
  assert abs(mean) < 4 * se + 1e-3, (model, form, mean, se)


@pytest.mark.parametrize("model", ["bayes-optimal", "0.5 x optimal"])
def test_seed_literal_factorisation_is_biased(estimates, model):
  """q(x_{t-1}, x_t, x_{t+1}|x_0) != q(x_{t-1}, x_{t+1}|x_0) q(x_t|x_{t-1}): the derivation's '?'."""
  mean, se = _paired(estimates, model, "seed literal", "denoising")
  assert mean > 10 * se and mean > 1.0, (mean, se)


def test_denoising_form_has_lower_variance_for_a_poor_model(estimates):
  """The derivation's claim holds where the model is far from the true posterior."""
  m = "zero (untrained)"
  var_den = estimates[m, "denoising"].var()
  assert 10 * var_den < estimates[m, "consistency"].var()
  assert 10 * var_den < estimates[m, "sampled"].var()


def test_sampled_form_has_lower_variance_near_the_true_posterior(estimates):
  """...but not everywhere: with the Bayes-optimal denoiser the log ratio is nearly constant."""
  m = "bayes-optimal"
  assert estimates[m, "sampled"].var() < 0.5 * estimates[m, "denoising"].var()


def test_exact_nll_is_below_every_estimate(estimates):
  nll = float(-DATA.log_prob(X)[0])
  for (model, form), v in estimates.items():
    if form != "seed literal":
      assert v.mean() > nll - 4 * v.std() / np.sqrt(v.size), (model, form)
