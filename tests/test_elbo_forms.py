"""scripts/elbo_forms.py at small size on the Gaussian toy: same mean, different variance."""

import json

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
  return values, elbo_forms.summarize_forms(values, num_dims=16), float(nll.mean())


@pytest.fixture(scope="module")
def zero_model():
  """x_hat = 0, far from the true posterior: where the derivation's variance claim holds."""
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


def _result(zero_model):
  """`compare_forms`'s result for the zero denoiser, assembled from (a copy of) the
  fixture's summary."""
  summary, exact_nll = dict(zero_model[1]), zero_model[2]
  return {
    "target": "gaussian",
    "num_steps": NUM_STEPS,
    "num_samples": NUM_SAMPLES,
    "num_examples": 8,
    "dims": 16,
    "gamma_min": -6.0,
    "gamma_max": 6.0,
    "seed": 0,
    "command": "",
    "runs": {"zero": {"forms": summary, "seconds": {"all": 1.5}, "exact_nll": exact_nll}},
    "wall_time_s": 2.25,
  }


def test_render_shows_every_form_and_the_verdicts(zero_model):
  result = _result(zero_model)
  result["runs"]["zero"]["scale"] = elbo_forms.GAUSSIAN_MODELS["zero"]
  text = elbo_forms.render(result)
  summary = result["runs"]["zero"]["forms"]
  rows = {line.split()[0]: line for line in text.splitlines() if line.split()}
  for name, r in summary.items():
    assert f"{r['mean']:.4f}" in rows[name] and f"{r['mean_bpd']:.5f}" in rows[name]
  assert rows["literal"].endswith("NO biased") and rows["denoising"].endswith("(ref)")
  assert rows["sampled"].endswith("yes")
  assert f"exact -log p(x) = {result['runs']['zero']['exact_nll']:.4f}" in text
  assert elbo_forms.agreement_line(summary) in text and elbo_forms.COLUMNS in text
  assert "16 dims, 8 examples x 48 trajectories, N=8 steps" in text


def test_write_result_is_strict_json_at_the_given_path(zero_model, tmp_path):
  result = _result(zero_model)
  result["runs"]["zero"]["forms"]["denoising"] = dict(
    result["runs"]["zero"]["forms"]["denoising"], z=float("nan")
  )
  path = tmp_path / "deep" / "forms.json"
  assert elbo_forms.write_result(result, str(path)) == str(path)
  got = json.loads(path.read_text())  # strict: NaN became null
  assert got["runs"]["zero"]["forms"]["denoising"]["z"] is None
  assert got["runs"]["zero"]["forms"]["sampled"] == result["runs"]["zero"]["forms"]["sampled"]
  with pytest.raises(ValueError, match="needs an output path"):
    elbo_forms.write_result(result, "")


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"target": "bogus"}, "Unknown target 'bogus'"),
    ({"gaussian_models": ("optimal", "best")}, r"Unknown gaussian_models \['best'\]"),
    ({"target": "checkpoint"}, "needs the training run's --workdir"),
  ],
)
def test_compare_forms_refuses_bad_options_before_any_work(kwargs, match, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match=match):
    elbo_forms.compare_forms(**kwargs)
  assert list(tmp_path.iterdir()) == []


def test_old_names_warn_and_agree(zero_model):
  values, summary, _ = zero_model
  with pytest.warns(DeprecationWarning, match="summarize_forms"):
    assert elbo_forms.summarize(values, num_dims=16) == summary
  with pytest.warns(DeprecationWarning, match="forms_table"):
    assert elbo_forms.format_table(summary) == elbo_forms.forms_table(summary)
  with pytest.warns(DeprecationWarning, match="compare_forms"), pytest.raises(ValueError):
    elbo_forms.report("bogus")
