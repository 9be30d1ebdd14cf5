"""Bits/dim evaluation, the probability-flow ODE and the samplers.

A tiny model is trained for a few steps on digits; its evaluation is recomputed
independently from the raw split. The samplers and the ODE are checked against a
Gaussian mixture whose Bayes-optimal denoiser and density are closed form.
"""

import json
import logging
import math
import os
import pathlib
import shutil
import subprocess
import sys

import absl.logging
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import devices_flags, run_script, tiny_config
from scipy import stats

from vdm_jax import data, evaluation, models, sampling, schedules, testing, training
from vdm_jax.data import toy2d
from vdm_jax.evaluation import bpd, ode, report
from vdm_jax.runtime import checkpoints, inference
from vdm_jax.runtime import mesh as mesh_lib

REPO = pathlib.Path(__file__).parents[1]


def strict_loads(text: str):
  """`json.loads` that refuses NaN, Infinity and -Infinity, as strict JSON parsers do."""

  def refuse(name):
    raise ValueError(f"not strict JSON: {name}")

  return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  config = tiny_config(root / "tfds", num_steps=20, ckpt_every=20, log_every=10)
  config.eval.batch_size = 128  # 300 test examples: the last batch is partial
  training.train_and_evaluate(config, str(root / "run"))
  return config, str(root / "run")


def test_cli_bpd_equals_independent_recomputation(trained, tmp_path):
  config, workdir = trained
  out = tmp_path / "eval.json"
  proc = run_script(
    "evaluate.py",
    f"--workdir={workdir}",
    f"--output={out}",
    "--seed=3",
    "--batch_size=128",
    f"--config.data.data_dir={config.data.data_dir}",
    tiny=True,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "bits/dim" in proc.stdout and "reproduce:" in proc.stdout
  assert "read only" not in proc.stderr  # orbax's notice for a read-only manager
  result = strict_loads(out.read_text())  # one pass: pass_se is not defined, null
  assert result["passes"] == 1 and result["pass_se"] is None
  assert result["num_examples"] == 300 and result["checkpoint_step"] == 20
  assert os.path.exists(str(out).replace(".json", "_by_t.csv"))
  assert os.path.exists(str(out).replace(".json", "_by_t.png"))

  # Independently: read the split in order straight from the tfds source and compute each
  # example's ELBO alone, with the documented randomness of pass 0: (k_t, k_noise) =
  # split(fold_in(key(seed), 0)); t from one antithetic draw over the N = 300 examples,
  # permuted (k_u, k_perm = split(k_t)); example n's noise from fold_in(k_noise, n).
  vdm, _, params, _ = inference.load_ema_params(config, workdir)
  source = data.digits.data_source(config.data.data_dir, "test")
  images = np.stack([np.asarray(source[i]["image"], np.int32) for i in range(len(source))])
  key_t, key_noise = jax.random.split(jax.random.fold_in(jax.random.key(3), 0))
  key_u, key_perm = jax.random.split(key_t)
  u0 = float(jax.random.uniform(key_u, ()))
  rank = np.asarray(jax.random.permutation(key_perm, 300))
  t = (1.0 - np.mod(u0 + rank / 300, 1.0)).astype(np.float32)
  one = jax.jit(lambda k, key, t: vdm.loss_terms(params, k[None], key, t=t[None])["bpd"][0])
  per_example = np.array(
    [one(images[n], jax.random.fold_in(key_noise, n), t[n]) for n in range(300)], np.float64
  )
  np.testing.assert_allclose(result["bpd"], per_example.mean(), rtol=1e-5)
  np.testing.assert_allclose(result["bpd_se"], per_example.std(ddof=1) / math.sqrt(300), rtol=1e-4)
  parts = result["recon_bpd"] + result["prior_bpd"] + result["diffusion_bpd"]
  np.testing.assert_allclose(parts, result["bpd"], rtol=1e-6)


def test_vdm_evaluate_by_default_gives_the_final_evaluation_of_training(trained, tmp_path):
  # Both use the run's evaluation seed (`bpd.evaluation_seed`: config.seed + 1); before,
  # vdm-evaluate's --seed defaulted to 0 (13.0888 against 12.9984 on one checkpoint).
  config, workdir = trained
  final = json.loads((pathlib.Path(workdir) / "final_metrics.json").read_text())["eval"]
  out = tmp_path / "eval.json"
  proc = run_script(
    "evaluate.py",
    f"--workdir={workdir}",
    f"--output={out}",
    f"--config.data.data_dir={config.data.data_dir}",
    tiny=True,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = strict_loads(out.read_text())
  assert record["seed"] == config.seed + 1 == bpd.evaluation_seed(config)
  assert record["checkpoint_step"] == 20
  assert [record[k] for k in ("num_steps", "passes", "split", "num_examples")] == [
    final[k] for k in ("num_steps", "passes", "split", "num_examples")
  ]
  assert abs(record["bpd"] - final["bpd"]) < 1e-6, (record["bpd"], final["bpd"])


def test_a_checkpoint_with_nan_parameters_is_refused(trained, tmp_path):
  # Crafted: checkpoint 21 is checkpoint 20 with NaN EMA parameters (as a vdm_jax that did
  # not check its saves could write).
  config, workdir = trained
  run = tmp_path / "run"
  shutil.copytree(workdir, run)
  vdm = models.make_model(config, data.dataset_info(config.data))
  tx = training.make_optimizer(config)
  shapes = jax.eval_shape(
    lambda k: training.create_train_state(vdm, k, tx, config), jax.random.key(0)
  )
  target = checkpoints.abstract_tree(shapes, mesh_lib.replicated(mesh_lib.make_mesh()))
  with checkpoints.make_checkpoint_manager(str(run), max_to_keep=5) as manager:
    state = checkpoints.restore_checkpoint(manager, 20, target)
    nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.ema_params)
    checkpoints.save_checkpoint(manager, 21, state.replace(ema_params=nan))
    manager.wait_until_finished()
  before = sorted(p.name for p in run.iterdir())
  proc = run_script(
    "evaluate.py", f"--workdir={run}", f"--config.data.data_dir={config.data.data_dir}", tiny=True
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  error = proc.stderr.strip().splitlines()[-1]
  assert error == (
    f"error: Checkpoint step 21 of {run} (test split) gave bits/dim nan: its EMA parameters "
    "hold non-finite values. Nothing was written; an earlier checkpoint may be intact "
    "(--step=20; kept: [20])."
  )
  assert sorted(p.name for p in run.iterdir()) == before  # no JSON, CSV or PNG
  # Training does not resume from it either.
  config = tiny_config(config.data.data_dir, num_steps=22, ckpt_every=20, log_every=10)
  config.eval.batch_size = 128
  with pytest.raises(training.NonFiniteStateError) as failed:
    training.train_and_evaluate(config, str(run))
  assert str(failed.value).startswith(
    f"Checkpoint step 21 in {run}/checkpoints holds non-finite values (in ema_params; saved "
    "by a vdm_jax that did not check its saves): no training can continue from it. To go "
    f"on, move {run}/checkpoints/21 aside to resume from step 20, the one before it"
  )


def test_run_files_are_strict_json(trained):
  """final_metrics.json (one-pass eval: pass_se null), metrics.jsonl, config.json and the
  checksums parse with a strict parser; a rerun returns the recorded result as it is."""
  config, workdir = trained
  final = strict_loads(pathlib.Path(workdir, "final_metrics.json").read_text())
  assert final["step"] == 20 and final["eval"]["passes"] == 1
  assert final["eval"]["pass_se"] is None and math.isfinite(final["eval"]["bpd"])
  rows = [strict_loads(line) for line in pathlib.Path(workdir, "metrics.jsonl").open()]
  assert {r["kind"] for r in rows} == {"train", "eval"}
  strict_loads(pathlib.Path(workdir, "config.json").read_text())
  for path in pathlib.Path(workdir, "checksums").iterdir():
    strict_loads(path.read_text())
  assert training.train_and_evaluate(config, workdir) == final


def test_loading_ema_params_logs_no_read_only_warning(trained, caplog):
  """Inference opens the checkpoints read-only without orbax's "Given directory is read
  only" warning (filtered around that call only: other warnings still get through)."""
  config, workdir = trained
  caplog.set_level(logging.INFO)
  inference.load_ema_params(config, workdir)
  assert caplog.records, "absl logging is not captured: the test would prove nothing"
  assert not [r for r in caplog.records if "read only" in r.getMessage()]
  absl.logging.warning("Given directory is read only=%s", "elsewhere")  # not filtered later
  assert "read only=elsewhere" in caplog.records[-1].getMessage()


def test_table_shows_numbers_that_are_not_defined():
  result = {
    "data": "digits",
    "num_examples": 1,
    "model": "vdm",
    "checkpoint_step": 3,
    "method": "elbo",
    "bpd": 2.0,
    "bpd_se": None,
    "gamma_0": -13.3,
    "gamma_1": 5.0,
    "passes": 2,
    "pass_bpd": [2.0, None],
    "pass_se": None,
    "terms": ["recon"],
    "recon_bpd": 2.0,
  }
  table = report.format_table(result, split="test", num_steps=0, exact=False, files={})
  assert "2.0000 +- n/a" in table and "2.0000, n/a" in table and "+- n/a (pass spread" in table


def test_evaluation_does_not_depend_on_batch_size(trained):
  config, workdir = trained
  vdm, mesh, params, _ = inference.load_ema_params(config, workdir)
  results = [
    evaluation.evaluate(vdm, params, config, mesh, batch_size=b, key=jax.random.key(5))
    for b in (64, 300, 1000)  # padded last batch, one exact batch, 700 rows of padding
  ]
  for r in results[1:]:
    for name in ("bpd", "bpd_se", "recon_bpd", "prior_bpd", "diffusion_bpd"):
      np.testing.assert_allclose(r[name], results[0][name], rtol=1e-5)
    np.testing.assert_allclose(r["_per_example"]["t"], results[0]["_per_example"]["t"])
  # Times stratified over the split: 300 evenly spaced points of [0, 1), in a random order.
  t = results[0]["_per_example"]["t"]
  np.testing.assert_allclose(np.diff(np.sort(t)), 1 / 300, atol=1e-5)
  assert abs(np.corrcoef(t, np.arange(300))[0, 1]) < 0.25


def test_single_pass_standard_error_covers_the_spread_between_passes(trained):
  config, workdir = trained
  vdm, mesh, params, _ = inference.load_ema_params(config, workdir)
  passes = 30
  multi = evaluation.evaluate(vdm, params, config, mesh, passes=passes, key=jax.random.key(1))
  single = evaluation.evaluate(vdm, params, config, mesh, key=jax.random.key(8))
  # The pass means differ only by Monte Carlo noise; the single-pass error bar also holds
  # the spread of the data, so (P - 1) s^2 / SE^2 must not exceed the chi-square(P - 1)
  # quantile that it would reach if SE were exactly the pass-to-pass deviation.
  statistic = (passes - 1) * np.var(multi["pass_bpd"], ddof=1) / single["bpd_se"] ** 2
  np.testing.assert_allclose(
    multi["pass_se"], np.std(multi["pass_bpd"], ddof=1) / np.sqrt(passes), rtol=1e-9
  )
  assert np.isnan(single["pass_se"])
  assert 0 < statistic < stats.chi2.ppf(0.999, passes - 1), (statistic, single["bpd_se"])
  rows = evaluation.diffusion_by_time(multi, vdm, params, num_bins=10)
  np.testing.assert_allclose(sum(r["bpd"] for r in rows), multi["diffusion_bpd"], rtol=1e-6)

  sampled = evaluation.evaluate(vdm, params, config, mesh, num_steps=10, key=jax.random.key(2))
  exact = evaluation.evaluate(
    vdm, params, config, mesh, num_steps=10, exact_time_sum=True, key=jax.random.key(2)
  )
  assert exact["bpd_se"] < sampled["bpd_se"]
  assert abs(exact["bpd"] - sampled["bpd"]) < 4 * sampled["bpd_se"]
  rows = evaluation.diffusion_by_time(exact, vdm, params)
  assert len(rows) == 10
  np.testing.assert_allclose(sum(r["bpd"] for r in rows), exact["diffusion_bpd"], rtol=1e-6)
  with pytest.raises(ValueError, match="exact_time_sum needs"):
    evaluation.evaluate(vdm, params, config, mesh, num_steps=0, exact_time_sum=True)


def test_sample_cli_and_missing_checkpoint(trained, tmp_path):
  config, workdir = trained
  proc = run_script(
    "sample.py",
    f"--workdir={workdir}",
    "--num_samples=4",
    "--num_steps=5",
    f"--output={tmp_path / 's'}",
    f"--config.data.data_dir={config.data.data_dir}",
    tiny=True,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  samples = np.load(tmp_path / "s.npz")["samples"]
  assert samples.shape == (4, 8, 8, 1) and samples.min() >= 0 and samples.max() < 17
  assert (tmp_path / "s.png").exists()
  with pytest.raises(FileNotFoundError, match="No checkpoints"):
    inference.load_ema_params(config, str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="No checkpoint for step 7"):
    inference.load_ema_params(config, workdir, step=7)


_TRAIN_ON_8 = """
import json, sys
import jax
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from vdm_jax import evaluation, training
from vdm_jax.runtime import checkpoints, inference
config = tiny_config({data_dir!r}, num_steps=3, ckpt_every=3)
training.train_and_evaluate(config, {workdir!r})
vdm, mesh, params, _ = inference.load_ema_params(config, {workdir!r})
bpd = [
  evaluation.evaluate(vdm, params, config, mesh, batch_size=b, key=jax.random.key(4))["bpd"]
  for b in (64, 1000)
]
samples = evaluation.draw_samples(vdm, params, jax.random.key(0), 5, mesh, num_steps=2)
print(json.dumps({{"bpd": bpd, "samples": samples.tolist()}}))
"""


def test_checkpoint_from_eight_devices_evaluates_on_one(tmp_path):
  env = dict(os.environ, XLA_FLAGS=devices_flags(8))
  code = _TRAIN_ON_8.format(
    tests=str(REPO / "tests"), data_dir=str(tmp_path / "tfds"), workdir=str(tmp_path / "run")
  )
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert jax.device_count() == 1
  config = tiny_config(tmp_path / "tfds")
  vdm, mesh, params, step = inference.load_ema_params(config, str(tmp_path / "run"))
  assert step == 3
  result = evaluation.evaluate(vdm, params, config, mesh, key=jax.random.key(4))
  assert result["num_examples"] == 300 and np.isfinite(result["bpd"])
  on_eight = json.loads(proc.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(on_eight["bpd"], result["bpd"], rtol=1e-5)  # batch 64, 1000
  # Samples: one key per sample, split over the devices; 5 on 8 devices (3 padding rows)
  # equal 5 on one device.
  samples = evaluation.draw_samples(vdm, params, jax.random.key(0), 5, mesh, num_steps=2)
  np.testing.assert_array_equal(np.asarray(on_eight["samples"]), samples)


# --- Closed-form checks on a Gaussian mixture -------------------------------------------

MIXTURE = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)


def _oracle(data=MIXTURE, gamma_max=8.0):
  return testing.OracleVDM(schedules.LinearSchedule(-13.3, gamma_max), data, (2,), vocab_size=256)


def _nearest_component(k):
  x = (2 * np.asarray(k, np.float64) + 1) / 256 - 1
  d = np.linalg.norm(x[:, None, :] - toy2d.MIXTURE_MEANS[None], axis=-1)
  return d.argmin(-1), d.min(-1)


def _matches_data(samples, reference):
  comp_s, dist_s = _nearest_component(samples)
  comp_r, dist_r = _nearest_component(reference)
  counts = np.bincount(comp_s, minlength=8)
  p_values = [
    stats.ks_2samp(samples[:, 0], reference[:, 0]).pvalue,
    stats.ks_2samp(samples[:, 1], reference[:, 1]).pvalue,
    stats.ks_2samp(dist_s, dist_r).pvalue,
    stats.chisquare(counts).pvalue,
  ]
  return min(p_values), p_values


@pytest.mark.parametrize("method", ["ancestral", "ddim", "dpm_solver"])
def test_samplers_with_optimal_denoiser_match_the_data(method):
  reference = toy2d.load("test")
  draw = jax.jit(
    lambda key, oracle: sampling.sample(oracle, None, key, 3000, num_steps=200, method=method),
    static_argnums=1,
  )
  p_min, p_values = _matches_data(np.asarray(draw(jax.random.key(0), _oracle())), reference)
  assert p_min > 1e-3, p_values
  # Negative control: the same sampler with a denoiser for twice the spread is rejected.
  wrong = _oracle(testing.GaussianMixture(toy2d.MIXTURE_MEANS, 2 * toy2d.MIXTURE_STD))
  p_min, p_values = _matches_data(np.asarray(draw(jax.random.key(0), wrong)), reference)
  assert p_min < 1e-6, p_values


def test_ode_likelihood_matches_exact_density():
  oracle = _oracle(gamma_max=10.0)
  x = jnp.asarray(toy2d.sample(128, 5), jnp.float32)
  nll = ode.nll_continuous(oracle, None, x, jax.random.key(0), exact_divergence=True)
  exact = -np.asarray(MIXTURE.log_prob(x), np.float64)
  assert np.max(np.abs(np.asarray(nll) - exact)) < 0.01
  # Hutchinson's estimator: unbiased, within its standard error.
  hutch = np.asarray(ode.nll_continuous(oracle, None, x, jax.random.key(1)), np.float64) - exact
  assert abs(hutch.mean()) < 4 * hutch.std(ddof=1) / math.sqrt(hutch.size) + 0.01


def test_dequantized_ode_bpd_bounds_the_exact_discrete_likelihood():
  oracle = _oracle(gamma_max=10.0)
  k = toy2d.load("test")[:256]
  bpd = np.asarray(
    ode.dequantized_bpd(oracle, None, jnp.asarray(k), jax.random.key(0), exact_divergence=True),
    np.float64,
  )
  exact = -np.asarray(toy2d.log_prob_quantised(k), np.float64) / (2 * math.log(2))
  gap = bpd - exact
  se = gap.std(ddof=1) / math.sqrt(gap.size)
  # A bound up to Monte Carlo error, and a tight one: bins (2/256) are narrow next to 0.06.
  assert gap.mean() > -4 * se, (gap.mean(), se)
  assert gap.mean() < 0.01, gap.mean()


def test_exact_time_sum_on_the_device_equals_the_loop_over_steps(trained, monkeypatch):
  """The on-device sum over T (chunks of steps vmapped, one gather per batch) gives each
  example the same terms as T separate `eval_step` calls with the same keys; evaluation,
  the exact sum and sampling trace their step once per model, however often called."""
  import chex

  config, workdir = trained
  vdm, mesh, params, _ = inference.load_ema_params(config, workdir)
  num_steps, key = 6, jax.random.key(3)
  for fn in (evaluation.jit_eval_step, evaluation.jit_exact_time_sum):
    fn.cache_clear()
  counted = chex.assert_max_traces(bpd.eval_step, n=1)  # inside the exact sum's map, once
  monkeypatch.setattr(bpd, "eval_step", counted)
  result = bpd.per_example_terms(
    vdm, params, config, mesh, split="test", num_steps=num_steps, key=key, exact_time_sum=True
  )
  again = bpd.per_example_terms(
    vdm, params, config, mesh, split="test", num_steps=num_steps, key=key, exact_time_sum=True
  )
  np.testing.assert_array_equal(again["total"], result["total"])  # and no retrace
  monkeypatch.undo()

  # Reference: the host loop over steps i = 1..T of eval_step at t = i/T.
  _, key_noise = jax.random.split(key)
  batch = next(data.eval_batches(config.data, "test", global_batch_size=300))
  images, index = jnp.asarray(batch["image"]), jnp.asarray(batch["index"])
  step = jax.jit(
    lambda k, t: bpd.eval_step(
      params, {"image": images, "index": index}, k, t, model=vdm, num_steps=num_steps
    )
  )
  per_step = []
  for i in range(1, num_steps + 1):
    terms = step(jax.random.fold_in(key_noise, i), jnp.full((300,), i / num_steps))
    per_step.append(np.asarray(terms["diffusion"], np.float64) / num_steps)
  np.testing.assert_allclose(result["diffusion"], np.sum(per_step, axis=0), rtol=2e-5)
  np.testing.assert_allclose(result["recon"], np.asarray(terms["recon"]), rtol=2e-5)
  np.testing.assert_allclose(result["per_step"], np.mean(per_step, axis=1), rtol=2e-5)
  assert np.all(np.isnan(result["t"]))

  # Sampling: one trace for any number of calls (the jitted sampler is built once).
  evaluation.checkpoint_samples.jit_sampler.cache_clear()
  sample_counted = chex.assert_max_traces(vdm.sample.__func__, n=1)
  monkeypatch.setattr(type(vdm), "sample", sample_counted)
  a = evaluation.draw_samples(vdm, params, jax.random.key(0), 4, mesh, num_steps=3)
  b = evaluation.draw_samples(vdm, params, jax.random.key(0), 4, mesh, num_steps=3)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 8, 8, 1)


def test_balanced_batches_cover_the_split_with_least_padding():
  assert bpd.balanced_batch_size(300, 256, 1) == 150  # 2 batches, no padding (not 256 + 44)
  assert bpd.balanced_batch_size(300, 256, 8) == 152  # a multiple of the device count
  assert bpd.balanced_batch_size(300, 1000, 8) == 304
  for n, b, d in [(1797, 256, 1), (1797, 256, 8), (7, 8, 8), (524, 128, 2)]:
    size = bpd.balanced_batch_size(n, b, d)
    assert size % d == 0 and size <= max(b, d) and -(-n // size) == -(-n // b)
