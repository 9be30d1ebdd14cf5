"""Class-conditional VDMs: label dropout, the paired ELBO classifier, guided sampling."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config
from scipy import special

from vdm_jax import data, models, predictions, sampling, schedules, testing
from vdm_jax.data import toy2d
from vdm_jax.evaluation import bpd, classify, ode
from vdm_jax.models.embed import LabelEmbedding
from vdm_jax.runtime import mesh as mesh_lib

NUM_CLASSES = 3


def _vdm(num_classes=NUM_CLASSES, label_dropout=0.0):
  return models.VDM(
    schedule=models.FixedSchedule(schedules.LinearSchedule()),
    denoiser=models.MLPDenoiser(
      hidden=32, num_layers=1, num_classes=num_classes, label_dropout=label_dropout
    ),
    vocab_size=256,
    data_shape=(2,),
    num_classes=num_classes,
  )


def _params(vdm):
  """Initialised params with a non-zero output layer (it starts at zero) and embeddings."""
  params = vdm.init(jax.random.key(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(
    tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  )


def test_label_dropout_replaces_labels_by_the_null_label_at_its_rate():
  n, rate = 4000, 0.3
  module = LabelEmbedding(NUM_CLASSES, 4, rate)
  batch = {"label": jnp.arange(n, dtype=jnp.int32) % NUM_CLASSES}
  variables = module.init(jax.random.key(0), batch, n)
  table = variables["params"]["embed"]["embedding"]  # [C + 1, 4], row C the null label
  out = module.apply(variables, batch, n, train=True, rngs={"dropout": jax.random.key(1)})
  is_null = np.all(np.asarray(out) == np.asarray(table[NUM_CLASSES]), axis=1)
  kept = ~is_null
  # Binomial(4000, 0.3): sd 29, so +-5 sd is +-145.
  assert abs(is_null.sum() - rate * n) < 145, is_null.sum()
  np.testing.assert_array_equal(out[kept], table[np.asarray(batch["label"])[kept]])
  # No dropout outside training; no label at all means the null label.
  np.testing.assert_array_equal(module.apply(variables, batch, n), table[batch["label"]])
  np.testing.assert_array_equal(module.apply(variables, None, 5), jnp.tile(table[-1], (5, 1)))
  with pytest.raises(ValueError, match="label"):
    module.apply(variables, {"label": jnp.zeros((n, 1), jnp.int32)}, n)


def test_label_dropout_in_the_training_loss_only():
  vdm = _vdm(label_dropout=0.5)
  params = _params(vdm)
  batch = {"image": jnp.full((64, 2), 100, jnp.int32), "label": jnp.zeros((64,), jnp.int32)}
  null = batch | {"label": jnp.full((64,), NUM_CLASSES, jnp.int32)}
  key = jax.random.key(2)
  total = jax.jit(
    lambda b, train: vdm.loss_terms(params, b, key, train=train)["total"], static_argnums=1
  )
  cond, dropped, train = total(batch, False), total(null, False), total(batch, True)
  is_null = np.isclose(train, dropped, rtol=1e-6)
  is_cond = np.isclose(train, cond, rtol=1e-6)
  assert np.all(is_null ^ is_cond) and 16 < is_null.sum() < 48, is_null.sum()


def test_classifier_is_paired_and_batch_invariant():
  # A model that ignores the label: the same noise for every label gives equal totals.
  plain = _vdm(num_classes=0)
  plain = models.VDM(**{**plain.__dict__, "num_classes": NUM_CLASSES})
  images = jax.random.randint(jax.random.key(3), (6, 2), 0, 256)
  batch = {"image": images, "index": jnp.arange(6, dtype=jnp.int32) + 10}
  totals = classify.label_totals(_params(plain), batch, jax.random.key(4), model=plain, num_steps=0)
  assert totals.shape == (6, NUM_CLASSES + 1)
  np.testing.assert_array_equal(totals, jnp.tile(totals[:, :1], (1, NUM_CLASSES + 1)))
  # A conditional model: labels differ, and an example's row does not depend on its batch.
  vdm = _vdm()
  params = _params(vdm)
  fn = jax.jit(functools.partial(classify.label_totals, model=vdm, num_steps=0))
  totals = fn(params, batch, jax.random.key(4))
  assert np.ptp(np.asarray(totals), axis=1).min() > 1e-3
  # Examples keep their index: another batch order (or batch) gives the same rows.
  perm = np.array([3, 0, 5, 1, 4, 2])
  shuffled = fn(params, jax.tree.map(lambda v: v[perm], batch), jax.random.key(4))
  np.testing.assert_allclose(shuffled, totals[perm], rtol=1e-5)


def test_summary_of_the_label_totals_against_direct_formulas():
  rng = np.random.default_rng(0)
  totals = rng.normal(50.0, 3.0, (40, NUM_CLASSES + 1))
  labels = rng.integers(NUM_CLASSES, size=40)
  s = classify.summarize_labels(totals, labels, num_dims=2)
  bits = lambda nats: nats / (2 * np.log(2.0))
  marginal = -special.logsumexp(-totals[:, :NUM_CLASSES], axis=1, b=1.0 / NUM_CLASSES)
  np.testing.assert_allclose(s["bpd"], bits(marginal).mean(), rtol=1e-12)
  np.testing.assert_allclose(s["bpd_conditional"], bits(totals[np.arange(40), labels]).mean())
  np.testing.assert_allclose(s["bpd_null"], bits(totals[:, -1]).mean())
  # The marginal bound is at most the smallest per-class bound plus log C.
  assert np.all(marginal <= totals[:, :NUM_CLASSES].min(axis=1) + np.log(NUM_CLASSES) + 1e-9)
  pred = totals[:, :NUM_CLASSES].argmin(axis=1)
  acc = np.mean(pred == labels)
  assert s["accuracy"] == acc and np.isclose(s["accuracy_se"], np.sqrt(acc * (1 - acc) / 40))
  assert np.sum(s["confusion"]) == 40 and np.trace(s["confusion"]) == np.sum(pred == labels)


def test_guided_sampling_options():
  vdm = _vdm()
  params = _params(vdm)
  key = jax.random.key(5)
  opts = {"num_steps": 5, "method": "dpm_solver", "decode": "mode"}
  cond = vdm.sample(params, key, 8, label=1, **opts)
  np.testing.assert_array_equal(vdm.sample(params, key, 8, label=1, guidance=0.0, **opts), cond)
  guided = vdm.sample(params, key, 8, label=1, guidance=3.0, **opts)
  assert not np.array_equal(guided, cond)
  with pytest.raises(ValueError, match="needs a label"):
    vdm.sample(params, key, 8, guidance=1.0, **opts)
  with pytest.raises(ValueError, match="label must be"):
    vdm.sample(params, key, 8, label=NUM_CLASSES, **opts)
  with pytest.raises(ValueError, match="not class-conditional"):
    _vdm(num_classes=0).sample(params, key, 8, label=0, **opts)


def test_sampling_takes_one_label_per_sample_and_traced_guidance():
  vdm = _vdm()
  params = _params(vdm)
  key = jax.random.key(6)
  opts = {"num_steps": 5, "method": "dpm_solver", "decode": "mode"}
  # An array of equal labels is the int label; numpy and jax scalars are numbers.
  want = vdm.sample(params, key, 4, label=2, guidance=1.5, **opts)
  for label, guidance in [(jnp.full((4,), 2), 1.5), (np.int64(2), np.float32(1.5))]:
    np.testing.assert_array_equal(
      vdm.sample(params, key, 4, label=label, guidance=guidance, **opts), want
    )
  # Concrete arrays are checked like ints; shapes and dtypes always.
  for label, match in [
    (jnp.array([0, 3, 1, 1]), r"label must be an int in \[0, 3\), got 3"),
    (jnp.array([0, 1]), "label has 2 entries for 4 samples"),
    (jnp.zeros((4,), jnp.float32), "dtype float32"),
    (jnp.zeros((4, 1), jnp.int32), r"shape \(4, 1\)"),
    (1.0, "label must be an int"),
  ]:
    with pytest.raises(ValueError, match=match):
      vdm.sample(params, key, 4, label=label, **opts)
  for guidance, match in [(jnp.float32(-1.0), "must be >= 0"), (jnp.ones(2), "scalar array")]:
    with pytest.raises(ValueError, match=match):
      vdm.sample(params, key, 4, label=1, guidance=guidance, **opts)
  with pytest.raises(ValueError, match="needs a label"):
    vdm.sample(params, key, 4, guidance=jnp.float32(1.0), **opts)

  # One label per sample, labels and weight traced under vmap and jit (one compilation
  # for all): sample n is the batch of one drawn with its own int label and float weight.
  # On the mixture oracle (smooth, unlike random weights), so compiled and eager rounding
  # move a value by at most one bin.
  mixture = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
  oracle = _LabelledOracle(
    schedules.LinearSchedule(), mixture, (2,), num_classes=len(mixture.means)
  )
  keys = jax.random.split(key, 8)
  labels = jnp.arange(8, dtype=jnp.int32) % oracle.num_classes

  @jax.jit
  def draw(labels, w):
    one = lambda k, y: sampling.sample(oracle, None, k, 1, label=y, guidance=w, **opts)[0]
    return jax.vmap(one)(keys, labels)

  for w in (0.0, 2.0):
    got = np.asarray(draw(labels, jnp.float32(w)))
    want = np.stack(
      [
        sampling.sample(oracle, None, k, 1, label=int(y), guidance=w, **opts)[0]
        for k, y in zip(keys, labels, strict=True)
      ]
    )
    assert np.abs(got - want).max() <= 1 and np.mean(got == want) > 0.75, (got, want)
  unguided, guided = draw(labels, jnp.float32(0.0)), draw(labels, jnp.float32(2.0))
  assert np.abs(np.asarray(unguided) - np.asarray(guided)).max() > 3


@pytest.fixture(scope="module")
def digits_cond(tmp_path_factory):
  """A tiny class-conditional digits model with random parameters (labels matter)."""
  config = tiny_config(tmp_path_factory.mktemp("tfds"))
  config.model.conditional = True
  data.prepare(config.data)
  vdm = models.make_model(config, data.dataset_info(config.data))
  params = vdm.init(jax.random.key(0))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(
    tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  )
  return config, vdm, params, mesh_lib.make_mesh()


@pytest.mark.slow  # two batch sizes, 12 passes each: ~30 s of CPU
def test_evaluation_reports_the_marginal_conditional_and_null_bounds(digits_cond):
  config, vdm, params, mesh = digits_cond
  run = functools.partial(bpd.evaluate, vdm, params, config, mesh, num_steps=0)
  result, other = run(batch_size=128), run(batch_size=300)
  # Batch-invariant, like the unconditional evaluation.
  for name in ("bpd", "bpd_conditional", "bpd_null"):
    np.testing.assert_allclose(result[name], other[name], rtol=1e-6)
  per_label, labels = result["_per_label"], result["_labels"]
  num_classes, n = vdm.num_classes, labels.size
  assert per_label.shape == (300, num_classes + 1) and np.bincount(labels).min() > 20
  # Paired: the conditional column is the conditional run itself (same times and noise),
  # so the terms of that run sum to it.
  terms = sum(result[f"{t}_bpd"] for t in result["terms"])
  np.testing.assert_allclose(result["bpd_conditional"], terms, rtol=1e-6)
  # Per example: min_c L_c <= marginal <= L_y + log C (uniform prior), in bits/dim.
  to_bits = 1.0 / (vdm.num_dims * np.log(2.0))
  marginal = special.logsumexp(-per_label[:, :num_classes], axis=1, b=1.0 / num_classes)
  marginal = -marginal * to_bits
  conditional = per_label[np.arange(n), labels] * to_bits
  assert np.all(marginal <= conditional + np.log(num_classes) * to_bits + 1e-9)
  assert np.all(marginal >= per_label[:, :num_classes].min(axis=1) * to_bits - 1e-9)
  # The headline is the cross-fitted estimate (label weights from an independent draw):
  # for the same estimates no weights give less than the log-sum-exp (Gibbs' inequality),
  # and here it is above it by more than rounding: the log-sum-exp alone would be low.
  assert result["bpd"] > marginal.mean() + 1e-3
  # The labels change the bounds here, and the log-sum-exp is the better one on average.
  assert marginal.mean() < result["bpd_conditional"] - 1e-3
  assert result["bpd_conditional"] != pytest.approx(result["bpd_null"], rel=1e-4)
  assert bpd.scalar_summary(result)["bpd_null"] == result["bpd_null"]
  # --classify reports the plain evaluation's bounds, and its argmin classifier.
  classified = classify.classify(vdm, params, config, mesh, num_steps=0, batch_size=128)
  for name in ("bpd", "bpd_se", "bpd_conditional", "bpd_null"):
    assert classified[name] == result[name], name
  predicted = per_label[:, :num_classes].argmin(axis=1)
  assert classified["accuracy"] == np.mean(predicted == labels)


def test_a_model_that_ignores_the_label_has_equal_bounds(digits_cond):
  config, vdm, params, mesh = digits_cond

  def same_rows(path, leaf):  # every label (and the null label) embedded as the same vector
    name = jax.tree_util.keystr(path)
    return jnp.zeros_like(leaf) if "['label_embed']" in name else leaf

  ignoring = jax.tree_util.tree_map_with_path(same_rows, params)
  assert jax.tree.leaves(ignoring) and not all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(ignoring), jax.tree.leaves(params), strict=True)
  )
  result = bpd.evaluate(vdm, ignoring, config, mesh, num_steps=0)
  np.testing.assert_allclose(result["bpd"], result["bpd_conditional"], rtol=1e-6)
  np.testing.assert_allclose(result["bpd_null"], result["bpd_conditional"], rtol=1e-6)


@dataclasses.dataclass(frozen=True, eq=False)
class _LabelledOracle(testing.OracleVDM):
  """Label c: the mixture's component c alone (Bayes-optimal denoiser of N(mu_c, s^2 I));
  the null label (C, or no batch): the whole mixture."""

  num_classes: int = 0

  def eps_hat(self, params, z_t, gamma_t, *, train=False, dropout_key=None, batch=None):
    means, std = self.data.means, self.data.std
    parts = [testing.GaussianMixture(means[c : c + 1], std) for c in range(self.num_classes)]
    x_hats = jnp.stack([m.x_hat(z_t, gamma_t) for m in (*parts, self.data)])  # [C + 1, B, D]
    rows = jnp.arange(z_t.shape[0])
    label = jnp.full_like(rows, self.num_classes) if batch is None else batch["label"]
    return predictions.eps_from_x(z_t, x_hats[label, rows], gamma_t)


def test_ode_per_label_and_marginal_likelihoods_match_the_exact_densities():
  mixture = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
  num_classes = len(toy2d.MIXTURE_MEANS)
  oracle = _LabelledOracle(
    schedules.LinearSchedule(-13.3, 10.0), mixture, (2,), num_classes=num_classes
  )
  x = jnp.asarray(toy2d.sample(16, 7), jnp.float32)
  labels = jnp.arange(num_classes + 1, dtype=jnp.int32)

  @jax.jit
  def per_label(x):  # [C + 1, B]: every label, the same probes
    def one(c):
      batch = {"label": jnp.full((x.shape[0],), c)}
      return ode.nll_continuous(
        oracle, None, x, jax.random.key(0), exact_divergence=True, batch=batch
      )

    return jax.vmap(one)(labels)

  nll = np.asarray(per_label(x), np.float64).T  # [B, C + 1]
  exact = -np.asarray(mixture.log_prob(x), np.float64)
  d2 = ((np.asarray(x)[:, None] - toy2d.MIXTURE_MEANS[None]) ** 2).sum(-1)  # [B, C]
  var = toy2d.MIXTURE_STD**2
  exact_per_label = 0.5 * d2 / var + np.log(2 * np.pi * var)  # -log N(x; mu_c, s^2 I), D = 2
  near = d2 < (4 * toy2d.MIXTURE_STD) ** 2  # far from mu_c the density is ~0 (huge nll)
  assert near.sum() >= 16
  np.testing.assert_allclose(nll[:, :num_classes][near], exact_per_label[near], atol=0.01)
  np.testing.assert_allclose(nll[:, num_classes], exact, atol=0.01)  # the null label
  # The marginal over labels with the uniform prior is the mixture's density.
  np.testing.assert_allclose(bpd.marginal_nats(nll[:, :num_classes]), exact, atol=0.01)


def test_ode_evaluation_solves_every_label_with_the_same_noise(digits_cond, monkeypatch):
  """The plumbing of `evaluate_ode` for a conditional model, with a cheap stand-in for the
  solve (its value: a draw from the example's key plus its label): labels in order, the
  same key for every label of an example, the same rows whatever the batch size."""
  config, vdm, params, mesh = digits_cond

  def stand_in(vdm_, params_, k, key, *, batch, **kwargs):
    del vdm_, params_, kwargs
    return (
      jax.random.uniform(key, (1,))
      + batch["label"].astype(jnp.float32)
      + k.sum().astype(jnp.float32) / 1e4
    )

  monkeypatch.setattr(ode, "dequantized_bpd", stand_in)
  # Hutchinson's estimator (the default above 8 dimensions): the marginal is cross-fitted
  # with label weights from the per-label ELBO. Stand-in pilots that favour label 0 as the
  # values do: with pilots equal to the values it would be their log-sum-exp exactly.
  pilots_seen, stand_in_pilots = [], np.tile(np.arange(10.0) * 44.0, (300, 1))

  def pilots(model, params_, config_, mesh_, *, split, batch_size, key):
    pilots_seen.append(batch_size)  # (balanced: 128 asked for is 3 batches of 100)
    return np.stack([stand_in_pilots, stand_in_pilots])  # two draws

  monkeypatch.setattr(ode, "_elbo_pilots", pilots)
  run = functools.partial(ode.evaluate_ode, vdm, params, config, mesh, key=jax.random.key(3))
  result, other = run(batch_size=128), run(batch_size=300)
  # (The posterior weighting is the tighter on the pilots: most labels are not label 0.)
  assert pilots_seen == [100, 300] and result["marginal_weights"] == "per-label ELBO: posterior"
  bits = result["_per_label"] / (vdm.num_dims * np.log(2.0))  # [N, C + 1]
  offsets = bits - bits[:, :1]
  np.testing.assert_allclose(offsets, np.tile(np.arange(11.0), (300, 1)), atol=1e-4)
  np.testing.assert_allclose(other["_per_label"], result["_per_label"], rtol=1e-6)
  assert result["bpd_null"] > result["bpd_conditional"] > result["bpd"]
  per_label = result["_per_label"][:, :10]
  cross_fitted = bpd.cross_fitted_marginal_nats(per_label[None], stand_in_pilots[None])
  to_bits = 1.0 / (vdm.num_dims * np.log(2.0))
  np.testing.assert_allclose(result["bpd"], cross_fitted.mean() * to_bits, rtol=1e-9)
  # Never below the log-sum-exp of the same values (Gibbs' inequality), here near it.
  log_sum_exp = bpd.marginal_nats(per_label).mean() * to_bits
  assert log_sum_exp <= result["bpd"] < log_sum_exp + 0.01
  # Exact traces: the log-sum-exp itself (unbiased: the same noise u for every label), and
  # no ELBO pass.
  exact = run(batch_size=300, exact_divergence=True)
  assert len(pilots_seen) == 2 and exact["marginal_weights"] == "exact"
  np.testing.assert_allclose(
    exact["bpd"], bpd.marginal_nats(exact["_per_label"][:, :10]).mean() * to_bits, rtol=1e-9
  )


def test_cross_fitted_marginal_is_a_bound_where_the_log_sum_exp_of_estimates_is_not():
  """Per-label bounds L_c estimated with noise (unbiased): the log-sum-exp of the estimates
  falls below the true marginal bound on average (Jensen), the cross-fitted estimate (weights
  from independent pilots) does not, and with exact pilots it equals the log-sum-exp."""
  rng = np.random.default_rng(0)
  L = np.array([100.0, 101.0, 103.0, 110.0])  # nats, 4 classes
  exact = float(bpd.marginal_nats(L[None])[0])
  assert exact == pytest.approx(-special.logsumexp(-L, b=0.25))  # independent route
  reps, sd = 20000, 2.0
  estimates = L + sd * rng.normal(size=(1, reps, 4))
  pilots = L + sd * rng.normal(size=(1, reps, 4))
  plug_in = bpd.marginal_nats(estimates[0])
  crossed = bpd.cross_fitted_marginal_nats(estimates, pilots)
  se = crossed.std() / np.sqrt(reps)
  assert plug_in.mean() < exact - 0.5  # biased low by far more than its error (~0.01)
  assert crossed.mean() > exact - 4 * se  # a bound on average
  assert crossed.mean() < exact + 2.0  # and not a loose one: weights near the optimum
  exact_pilots = np.broadcast_to(L, estimates.shape)
  np.testing.assert_allclose(
    bpd.cross_fitted_marginal_nats(exact_pilots, exact_pilots), np.full(reps, exact)
  )
  with pytest.raises(ValueError, match=r"\[P, N, C\]"):
    bpd.cross_fitted_marginal_nats(estimates[0], pilots[0])


def test_held_out_choice_of_label_weights_stays_a_bound_and_picks_the_tighter_one():
  """Two regimes of noisy per-label estimates (unbiased): labels that tell the classes
  apart (the true label's bound 10 nats below the others, noise sd 6 nats) and labels
  that carry nothing (equal bounds, sd 2). The estimate stays above the exact marginal bound on average in
  both, and chooses the weighting that is tighter there: "label" in the first (noisy
  posterior weights put weight on wrong classes), "posterior" in the second (where the
  label rule pays log C)."""
  rng = np.random.default_rng(1)
  n, num_classes = 400, 4
  labels = rng.integers(num_classes, size=n)
  rows = np.arange(n)
  informative = np.full((n, num_classes), 110.0)
  informative[rows, labels] = 100.0
  flat = np.full((n, num_classes), 100.0)
  for exact, sd, want in [(informative, 6.0, "label"), (flat, 2.0, "posterior")]:
    bound = bpd.marginal_nats(exact).mean()  # the exact marginal bound
    chosen, by_label, by_posterior, rules = [], [], [], []
    for _ in range(200):
      draws = exact + sd * rng.normal(size=(3, n, num_classes))
      nats, rule = bpd.held_out_marginal_nats(draws[0], draws[1:], labels)
      chosen.append(nats.mean() - bound)
      rules.append(rule)
      by_label.append(draws[0][rows, labels].mean() + np.log(num_classes) - bound)
      crossed = bpd.cross_fitted_marginal_nats(draws[:1], draws[1:].mean(0)[None])
      by_posterior.append(crossed.mean() - bound)
    gap, se = np.mean(chosen), np.std(chosen) / np.sqrt(len(chosen))
    assert gap > -4 * se, (want, gap, se)  # a bound in expectation
    assert rules.count(want) >= 190, (want, rules.count(want))
    other = np.mean(by_posterior if want == "label" else by_label)
    assert gap < other - 0.3, (want, gap, other)
  with pytest.raises(ValueError, match="K >= 2"):
    bpd.held_out_marginal_nats(flat, flat[None], labels)


@pytest.mark.slow  # trains 3 steps and runs two tools: ~40 s
def test_sample_and_class_grid_tools_draw_the_same_guided_samples(tmp_path):
  from test_cli import cli_many

  from vdm_jax import training

  config = tiny_config(tmp_path / "tfds", num_steps=3)
  config.model.conditional = True
  run = tmp_path / "run"
  training.train_and_evaluate(config, str(run))
  options = ["--method=dpm_solver", "--num_steps=4", "--seed=3"]
  sample, grid, *refused = cli_many(
    [
      (
        "sample",
        [
          f"--workdir={run}",
          *options,
          "--label=2",
          "--guidance=2",
          "--num_samples=3",
          f"--output={tmp_path / 's'}",
        ],
      ),
      (
        "class_grid",
        [
          f"--workdir={run}",
          "--num_steps=4",
          "--seed=3",
          "--guidance=0,2",
          "--per_class=3",
          f"--output={tmp_path / 'g_w{w}.png'}",
        ],
      ),
      ("class_grid", [f"--workdir={run}", "--guidance=0,2", f"--output={tmp_path / 'g.png'}"]),
      ("class_grid", [f"--workdir={run}", "--guidance=-1", f"--output={tmp_path / 'g.png'}"]),
      ("class_grid", [f"--workdir={run}", "--guidance=x", f"--output={tmp_path / 'g.png'}"]),
      ("sample", [f"--workdir={run}", "--label=10", f"--output={tmp_path / 'bad'}"]),
    ],
    cwd=tmp_path,
  )
  assert sample["returncode"] == 0 and grid["returncode"] == 0, (sample, grid)
  assert "DeprecationWarning" not in sample["stderr"] + grid["stderr"]
  assert "3 samples (dpm_solver, T=4" in sample["stdout"]
  assert "10 classes x 3 samples" in grid["stdout"] and "W=2" in grid["stdout"]
  for w in ("0", "2"):
    assert (tmp_path / f"g_w{w}.png").stat().st_size > 0
  drawn = np.load(tmp_path / "s.npz")["samples"]
  rows = np.load(tmp_path / "g_w2.npz")["samples"]  # [classes, per_class, 8, 8, 1]
  # Row 2 of the W=2 grid is the tool's --label=2 --guidance=2 draw, sample for sample.
  np.testing.assert_array_equal(rows[2], drawn)
  # (After 3 steps the label embedding has hardly moved, so W changes little here; the
  # unit tests above show guidance at work.)
  assert np.load(tmp_path / "g_w0.npz")["samples"].shape == rows.shape
  for proc, message in zip(
    refused,
    [
      "has no {w}",
      "every W must be >= 0",
      "'x' is not a number",
      r"label must be an int in [0, 10)",
    ],
    strict=True,
  ):
    assert proc["returncode"] == 1 and message in proc["stderr"], proc
    assert "Traceback" not in proc["stderr"]
  assert not (tmp_path / "g.png").exists() and not (tmp_path / "bad.npz").exists()
