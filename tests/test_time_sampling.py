"""Lower-variance estimators of the same ELBO: importance sampling of t and the VDM paper's
variance-minimising schedule objective."""

import dataclasses
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import restore_state, tiny_config
from scipy import stats

from vdm_jax import models, times, training
from vdm_jax.config import base_config
from vdm_jax.evaluation import diagnostics, runs

REPO = pathlib.Path(__file__).parents[1]


def _loss_of_t(t):
  """A per-t loss shaped like a diffusion term: large near both ends of [0, 1]."""
  return jnp.exp(4.0 * t) + 0.3 / jnp.sqrt(t + 1e-3)


INTEGRAL = (math.exp(4.0) - 1.0) / 4.0 + 0.6 * (math.sqrt(1.001) - math.sqrt(1e-3))


@pytest.mark.parametrize("antithetic", [False, True])
def test_importance_sampling_is_unbiased_and_lowers_variance(antithetic):
  num_bins, batch, reps = 16, 64, 400
  centres = (jnp.arange(num_bins, dtype=jnp.float32) + 0.5) / num_bins
  probs = _loss_of_t(centres) / _loss_of_t(centres).sum()  # roughly sqrt(E[L^2]) per bin

  def batch_mean(key, importance):
    if importance:
      t, w = times.importance_sample_times(key, batch, probs, antithetic=antithetic)
    else:
      t, w = times.sample_times(key, batch, antithetic=antithetic), 1.0
    return jnp.mean(w * _loss_of_t(t))

  keys = jax.random.split(jax.random.key(0), reps)
  uni = np.asarray(jax.vmap(lambda k: batch_mean(k, False))(keys), np.float64)
  imp = np.asarray(jax.vmap(lambda k: batch_mean(k, True))(keys), np.float64)
  for est in (uni, imp):
    assert abs(est.mean() - INTEGRAL) < 4 * est.std(ddof=1) / math.sqrt(reps) + 1e-4
  ratio = uni.var() / imp.var()
  print(
    f"antithetic={antithetic}: var uniform {uni.var():.3e}, importance {imp.var():.3e}, ratio {ratio:.1f}"
  )
  assert ratio > 3.0


def test_importance_proposal_and_weights():
  probs = jnp.array([0.1, 0.6, 0.05, 0.25])
  t, w = times.importance_sample_times(jax.random.key(1), 20000, probs, antithetic=False)
  b = np.asarray(times.time_bin(t, 4))
  counts = np.bincount(b, minlength=4)
  assert stats.chisquare(counts, 20000 * np.asarray(probs)).pvalue > 1e-3
  np.testing.assert_allclose(w, 1.0 / (4 * np.asarray(probs)[b]), rtol=1e-6)
  assert float(t.min()) > 0.0 and float(t.max()) <= 1.0
  # Inside a bin t is uniform.
  inside = np.asarray(t)[b == 1] * 4 - 1
  assert stats.kstest(inside, "uniform").pvalue > 1e-3
  # Discrete time: t on the grid, one probability per step.
  t, w = times.importance_sample_times(jax.random.key(2), 1000, probs, num_steps=4)
  np.testing.assert_allclose(np.asarray(t) * 4, np.round(np.asarray(t) * 4), atol=1e-5)
  np.testing.assert_allclose(
    w, 1.0 / (4 * np.asarray(probs)[np.round(np.asarray(t) * 4).astype(int) - 1]), rtol=1e-6
  )
  # Every grid time i/T falls in its own bin i - 1, also where float32 i/T * T > i.
  grid = (jnp.arange(1000, dtype=jnp.float32) + 1.0) / 1000
  np.testing.assert_array_equal(times.time_bin(grid, 1000, discrete=True), np.arange(1000))
  m = times.update_time_moments(times.init_time_moments(1000), grid, grid, num_steps=1000)
  np.testing.assert_allclose(m["second_moment"], np.asarray(grid) ** 2, rtol=1e-6)
  with pytest.raises(ValueError, match="K = 4 != T = 5"):
    times.importance_sample_times(jax.random.key(2), 8, probs, num_steps=5)
  with pytest.raises(ValueError, match="bin_probs"):
    times.importance_sample_times(jax.random.key(2), 8, probs[None])


def test_time_moments_update_and_proposal():
  m = times.init_time_moments(4)
  np.testing.assert_allclose(times.importance_bin_probs(m), 0.25)
  t = jnp.array([0.1, 0.2, 0.6, 0.65, 0.7])
  loss = jnp.array([1.0, 3.0, 2.0, 4.0, 6.0])
  m = times.update_time_moments(m, t, loss, decay=0.9)
  want = np.array([(1 + 9) / 2, 0.0, (4 + 16 + 36) / 3, 0.0])
  np.testing.assert_allclose(m["second_moment"], want, rtol=1e-6)
  np.testing.assert_array_equal(m["seen"], [True, False, True, False])
  np.testing.assert_allclose(times.importance_bin_probs(m), 0.25)  # not every bin seen yet
  m = times.update_time_moments(
    m, jnp.array([0.3, 0.9, 0.15]), jnp.array([2.0, 1.0, 3.0]), decay=0.9
  )
  want = np.array([0.9 * 5 + 0.1 * 9, 4.0, (4 + 16 + 36) / 3, 1.0])
  np.testing.assert_allclose(m["second_moment"], want, rtol=1e-6)
  probs = np.asarray(times.importance_bin_probs(m, uniform_mix=0.1))
  root = np.sqrt(want)
  np.testing.assert_allclose(probs, 0.9 * root / root.sum() + 0.025, rtol=1e-6)


@dataclasses.dataclass(frozen=True)
class _Info:
  name: str = "toy2d"
  shape: tuple = (2,)
  vocab_size: int = 256


def _toy_vdm(objective):
  c = base_config()
  c.model.denoiser, c.model.mlp_hidden, c.model.mlp_layers = "mlp", 32, 2
  c.schedule.kind, c.schedule.objective = "monotone", objective
  return models.make_model(c, _Info())


def test_variance_objective_gradients_against_plain_autodiff():
  """Same loss; denoiser and end points get the ELBO's gradient; the shape parameters
  (l1, l2, l3 of the monotone network) get that of mean(L^2) / (2 mean(L)), L = diffusion."""
  var_vdm, elbo_vdm = _toy_vdm("variance"), _toy_vdm("elbo")
  params = elbo_vdm.init(jax.random.key(0))
  # Move away from the init (zero output layer) so every gradient is non-trivial.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape), params)
  k = jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 2)))
  key = jax.random.key(1)
  scale = 1.0 / (2 * math.log(2.0))  # bits/dim per nat, D = 2

  def bpd(vdm):
    return lambda p: vdm.loss_terms(p, k, key)["bpd"].mean()

  v_var, g_var = jax.value_and_grad(bpd(var_vdm))(params)
  v_elbo, g_elbo = jax.value_and_grad(bpd(elbo_vdm))(params)
  np.testing.assert_allclose(v_var, v_elbo, rtol=1e-6)

  def second_moment(p):  # E[L^2] / (2 E[L]), E[L] held fixed: it does not depend on the shape
    diffusion = elbo_vdm.loss_terms(p, k, key)["diffusion"]
    return jnp.mean(jnp.square(diffusion)) / (2.0 * jax.lax.stop_gradient(diffusion.mean()))

  g_sq = jax.grad(lambda p: second_moment(p) * scale)(params)

  close = lambda a, b: np.testing.assert_allclose(
    a, b, rtol=2e-4, atol=1e-4 * float(np.abs(b).max())
  )
  jax.tree.map(close, g_var["denoiser"], g_elbo["denoiser"])
  for end in ("gamma_min", "gamma_max"):
    close(g_var["schedule"][end], g_elbo["schedule"][end])
  for layer in ("l1", "l2", "l3"):
    jax.tree.map(close, g_var["schedule"][layer], g_sq["schedule"][layer])
    # The ELBO's own shape gradient is a different (pure-noise) vector.
    assert not np.allclose(
      g_elbo["schedule"][layer]["kernel"], g_sq["schedule"][layer]["kernel"], rtol=0.1
    )


@pytest.mark.slow  # trains a run, then runs vdm-time-variance on it: a minute under load
def test_trainer_with_importance_sampling(tmp_path, capsys):
  """(The variance objective's training path is `loss_terms` under grad, tested above.)"""
  config = tiny_config(tmp_path / "tfds", num_steps=6, ckpt_every=3, log_every=3)
  config.loss.time_sampling, config.loss.time_bins = "importance", 8
  result = training.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(result["train"]["loss_bpd"])
  state = restore_state(tmp_path / "run", 6)
  assert np.all(state["time_moments"]["seen"]) and np.all(
    state["time_moments"]["second_moment"] > 0
  )
  config.train.num_steps = 9  # resumes with the moments restored
  assert training.train_and_evaluate(config, str(tmp_path / "run"))["step"] == 9

  # The variance measurement of this checkpoint (what `vdm-time-variance` prints and writes),
  # through the deprecated one-call wrapper, which also checks the compute/render split.
  run = runs.load_run(str(tmp_path / "run"), config=config)
  with pytest.warns(DeprecationWarning, match="time_variance_of_run"):
    got = diagnostics.time_variance_report(run, num_examples=32, reps=4, pilot=2, num_bins=8)
  schemes = diagnostics.SCHEMES
  means = [got[s]["bpd"] for s in schemes]
  spread = 4 * max(got[s]["bpd_se_of_mean"] for s in schemes)
  assert max(means) - min(means) < 2 * spread, got  # the same ELBO, whatever the scheme
  written = diagnostics.time_variance_path(run.workdir, 0)
  assert written.endswith("time_variance_T0.json")
  assert json.loads(pathlib.Path(written).read_text())["uniform"] == got["uniform"]
  text = diagnostics.render_time_variance(got)
  assert text in capsys.readouterr().out
  for scheme in schemes:  # one row per scheme: its bits/dim and the variance ratio
    ratio = got["antithetic"]["var_batch_mean"] / got[scheme]["var_batch_mean"]
    assert f"{got[scheme]['bpd']:.4f}" in text and f"{ratio:.2f}x" in text
  from vdm_jax import config as config_lib

  config.schedule.objective = "variance"  # needs the monotone schedule
  with pytest.raises(ValueError, match="schedule.objective"):
    config_lib.validate(config)
