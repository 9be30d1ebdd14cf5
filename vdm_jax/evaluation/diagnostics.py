"""Diagnostics of the ELBO estimator: its variance under different ways of drawing t."""

from __future__ import annotations

import math
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import data, elbo, times
from vdm_jax.runtime import storage
from vdm_jax.runtime import workdir as workdir_lib

__all__ = [
  "SCHEMES",
  "render_time_variance",
  "time_sampling_variance",
  "time_variance_of_run",
  "time_variance_path",
  "time_variance_report",
]

SCHEMES = ("uniform", "antithetic", "importance", "importance_antithetic")
"""The ways of drawing t that `time_sampling_variance` compares, in its order."""


def time_sampling_variance(
  model,
  params,
  k,
  key,
  *,
  num_steps: int = 0,
  num_bins: int = 32,
  reps: int = 32,
  pilot: int = 16,
) -> dict:
  """Variance of the ELBO estimate of a batch under four ways of drawing t.

  Schemes: "uniform" (i.i.d. t), "antithetic" (stratified, as in training),
  "importance" and "importance_antithetic" (t from the proposal p_b proportional to
  sqrt(E[L(t)^2]) per bin, estimated from `pilot` uniform draws, diffusion term weighted
  by 1/p(t)). Each scheme draws t and noise `reps` times for the same examples.

  Args:
    model: a diffusion model (`models.DiffusionModel`); params: its (EMA) params; k: integer
      data `[B, *data_shape]`.
    num_steps: T (0 = continuous); in discrete time there are T bins.

  Returns:
    {scheme: {"bpd", "bpd_se_of_mean", "var_batch_mean", "var_per_example"}} (bits/dim;
    `var_batch_mean` is the variance over repetitions of the batch's mean bits/dim,
    `var_per_example` the variance over repetitions of one example's, averaged over
    examples), plus "proposal" (the bin probabilities) and the settings.
  """

  batch = k.shape[0]
  num_bins = num_steps or num_bins

  @jax.jit
  def run(key, t, weight):
    return model.loss_terms(params, k, key, num_steps=num_steps, t=t, t_weight=weight)

  def draw(key, scheme, probs):
    key_t, key_l = jax.random.split(key)
    antithetic = scheme.endswith("antithetic")
    if scheme.startswith("importance"):
      t, w = times.importance_sample_times(
        key_t, batch, probs, num_steps=num_steps, antithetic=antithetic
      )
    else:
      t = times.sample_times(key_t, batch, num_steps=num_steps, antithetic=antithetic)
      w = jnp.ones_like(t)
    return run(key_l, t, w)

  # Pilot: the per-bin average of L(t)^2 under stratified uniform t (decay r/(r+1) makes
  # the running estimate an equal-weight mean of the pilot batches), then the proposal.
  moments = times.init_time_moments(num_bins)
  for r in range(pilot):
    terms = draw(jax.random.fold_in(key, 10_000 + r), "antithetic", None)
    moments = times.update_time_moments(
      moments, terms["t"], terms["diffusion"], decay=r / (r + 1), num_steps=num_steps
    )
  probs = times.importance_bin_probs(moments)

  result = {"num_examples": batch, "reps": reps, "pilot": pilot, "num_steps": num_steps}
  for scheme in SCHEMES:
    nats = [draw(jax.random.fold_in(key, r), scheme, probs)["total"] for r in range(reps)]
    totals = elbo.bits_per_dim(np.asarray(nats, np.float64), model.num_dims)  # [reps, B]
    means = totals.mean(axis=1)
    result[scheme] = {
      "bpd": float(means.mean()),
      "bpd_se_of_mean": float(means.std(ddof=1) / math.sqrt(reps)),
      "var_batch_mean": float(means.var(ddof=1)),
      "var_per_example": float(totals.var(axis=0, ddof=1).mean()),
    }
  result["proposal"] = [float(p) for p in np.asarray(probs)]
  return result


def time_variance_of_run(
  run,
  *,
  num_examples: int = 256,
  num_steps: int = 0,
  num_bins: int = 32,
  reps: int = 32,
  pilot: int = 16,
  seed: int = 0,
) -> dict:
  """`time_sampling_variance` of a loaded checkpoint's EMA params (`runs.load_run`) on the
  first `num_examples` test examples; prints and writes nothing.

  Returns:
    `time_sampling_variance`'s dict with "checkpoint_step", "seconds", "data", "workdir",
    "schedule" and "schedule_objective" added (`render_time_variance` prints it).
  """
  config = run.config
  k = jnp.asarray(data.first_examples(config.data, "test", num_examples)["image"])
  start = time.perf_counter()
  result = time_sampling_variance(
    run.model,
    run.params,
    k,
    jax.random.key(seed),
    num_steps=num_steps,
    num_bins=num_bins,
    reps=reps,
    pilot=pilot,
  )
  return result | {
    "checkpoint_step": run.step,
    "seconds": time.perf_counter() - start,
    "data": config.data.name,
    "workdir": run.workdir,
    "schedule": config.schedule.kind,
    "schedule_objective": config.schedule.objective,
  }


def time_variance_path(workdir: str, num_steps: int) -> str:
  """Where the time-variance JSON of a run goes by default: `<workdir>/time_variance_T<T>.json`."""
  return storage.join(workdir, f"time_variance_T{num_steps}.json")


def render_time_variance(result: dict) -> str:
  """`time_variance_of_run`'s result as text: a heading and one row per scheme: bits/dim,
  the two variances, and "vs antithetic", antithetic's variance of the batch mean over the
  scheme's (above 1 where the scheme has the lower variance)."""
  base = result["antithetic"]["var_batch_mean"]
  lines = [
    f"{result['data']}, step {result['checkpoint_step']}, schedule {result['schedule']} "
    f"({result['schedule_objective']}), T={result['num_steps']}, {result['num_examples']} "
    f"examples, {result['reps']} draws per scheme ({result['seconds']:.1f} s)",
    f"{'scheme':<24}{'bits/dim':>10}{'var(batch mean)':>18}{'var(example)':>15}"
    f"{'vs antithetic':>15}",
  ]
  for scheme in SCHEMES:
    r = result[scheme]
    lines.append(
      f"{scheme:<24}{r['bpd']:>10.4f}{r['var_batch_mean']:>18.3e}{r['var_per_example']:>15.3e}"
      f"{base / r['var_batch_mean']:>14.2f}x"
    )
  return "\n".join(lines)


def time_variance_report(run, *, output: str | None = None, **kwargs) -> dict:
  """Deprecated: `time_variance_of_run(run, **kwargs)`, written as JSON at `output` (default
  `time_variance_path`) and printed with `render_time_variance`; returns the result."""
  warnings.warn(
    "diagnostics.time_variance_report is deprecated: use time_variance_of_run, "
    "render_time_variance and workdir.write_json_atomic.",
    DeprecationWarning,
    stacklevel=2,
  )
  result = time_variance_of_run(run, **kwargs)
  output = output or time_variance_path(run.workdir, result["num_steps"])
  workdir_lib.write_json_atomic(output, workdir_lib.dumps_strict(result, indent=2))
  print(render_time_variance(result))
  print(f"JSON: {output}")
  return result
