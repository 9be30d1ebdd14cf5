"""scripts/elbo_forms.py at small size on the Gaussian toy: same mean, different variance."""

import jax
import numpy as np
import pytest

from vdm_jax.evaluation import elbo_forms

NUM_STEPS = 8
NUM_SAMPLES = 48


def _measure(scale):
  x, x_hat_fn, schedule, nll_fn, nll = elbo_forms.gaussian_target(
    jax.random.key(1), num_examples=8, dims=16, scale=scale, gamma_min=-6.0, gamma_max=6.0
  )
  values, _ = elbo_forms.estimates(
    jax.random.key(2),
    x,
    x_hat_fn,
    schedule,
    NUM_STEPS,
    nll_fn,
    num_samples=NUM_SAMPLES,
    chunk=NUM_SAMPLES,
    one_step=False,
  )
  return values, elbo_forms.summarize(values, num_dims=16), float(nll.mean())


@pytest.fixture(scope="module")
def zero_model():
  """x_hat = 0, far from the true posterior: where the seed's variance claim holds."""
  return _measure(0.0)


def test_shapes_and_forms(zero_model):
  values, summary, _ = zero_model
  assert list(values) == ["consistency", "denoising", "sampled", "literal"]
  assert all(v.shape == (NUM_SAMPLES, 8) for v in values.values())
  assert [n for n, r in summary.items() if r["biased_form"]] == ["literal"]


def test_unbiased_forms_agree_in_mean(zero_model):
  _, summary, exact_nll = zero_model
  den = summary["denoising"]
  for name in ("consistency", "sampled"):
    r = summary[name]
    assert r["agrees"] and abs(r["diff"]) < 4 * r["diff_se"], (name, r)
    # The standard errors are small enough for the agreement to mean something.
    assert r["diff_se"] < 5e-3 * den["mean"], (name, r)
    assert r["mean"] > exact_nll, (name, r["mean"], exact_nll)


def test_literal_consistency_form_is_biased_upwards(zero_model):
  r = zero_model[1]["literal"]
  assert not r["agrees"] and r["z"] > 10 and r["diff"] > 0.01 * zero_model[1]["denoising"]["mean"]


def test_denoising_form_has_the_lowest_variance_for_a_poor_model(zero_model):
  _, summary, _ = zero_model
  assert summary["consistency"]["var_ratio"] > 10, summary["consistency"]
  assert summary["sampled"]["var_ratio"] > 10, summary["sampled"]
  assert summary["consistency"]["median_var_ratio"] > 10
  assert summary["sampled"]["median_var_ratio"] > 10


def test_summary_matches_numpy(zero_model):
  values, summary, _ = zero_model
  v = values["sampled"]
  r = summary["sampled"]
  np.testing.assert_allclose(r["mean"], v.mean(), rtol=1e-12)
  np.testing.assert_allclose(r["avg_var"], v.var(axis=0, ddof=1).mean(), rtol=1e-12)
  np.testing.assert_allclose(r["mean_bpd"], r["mean"] / (16 * np.log(2)), rtol=1e-12)
  d = v - values["denoising"]
  se = np.sqrt(np.sum(d.var(axis=0, ddof=1) / NUM_SAMPLES)) / d.shape[1]
  np.testing.assert_allclose(r["diff_se"], se, rtol=1e-12)
