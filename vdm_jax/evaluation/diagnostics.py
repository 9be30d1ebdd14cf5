"""Diagnostics of the ELBO estimator: its variance under different ways of drawing t."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import data, elbo, times
from vdm_jax.runtime import storage
from vdm_jax.runtime import workdir as workdir_lib

__all__ = ["time_sampling_variance", "time_variance_report"]


def time_sampling_variance(
  vdm,
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
    vdm: a diffusion model (`models.DiffusionModel`); params: its (EMA) params; k: integer
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
    return vdm.loss_terms(params, k, key, num_steps=num_steps, t=t, t_weight=weight)

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
  for scheme in ("uniform", "antithetic", "importance", "importance_antithetic"):
    nats = [draw(jax.random.fold_in(key, r), scheme, probs)["total"] for r in range(reps)]
    totals = elbo.bits_per_dim(np.asarray(nats, np.float64), vdm.num_dims)  # [reps, B]
    means = totals.mean(axis=1)
    result[scheme] = {
      "bpd": float(means.mean()),
      "bpd_se_of_mean": float(means.std(ddof=1) / math.sqrt(reps)),
      "var_batch_mean": float(means.var(ddof=1)),
      "var_per_example": float(totals.var(axis=0, ddof=1).mean()),
    }
  result["proposal"] = [float(p) for p in np.asarray(probs)]
  return result


def time_variance_report(
  run,
  *,
  num_examples: int = 256,
  num_steps: int = 0,
  num_bins: int = 32,
  reps: int = 32,
  pilot: int = 16,
  seed: int = 0,
  output: str | None = None,
) -> dict:
  """`time_sampling_variance` of a loaded checkpoint's EMA params (`runs.load_run`) on the
  first `num_examples` test examples; writes the JSON (default
  `<workdir>/time_variance_T<T>.json`), prints a table and returns the result."""
  vdm, params, step, config, workdir = run.model, run.params, run.step, run.config, run.workdir
  k = jax.numpy.asarray(data.first_examples(config.data, "test", num_examples)["image"])
  start = time.perf_counter()
  result = time_sampling_variance(
    vdm,
    params,
    k,
    jax.random.key(seed),
    num_steps=num_steps,
    num_bins=num_bins,
    reps=reps,
    pilot=pilot,
  )
  result |= {"checkpoint_step": step, "seconds": time.perf_counter() - start}
  result |= {"schedule": config.schedule.kind, "schedule_objective": config.schedule.objective}
  output = output or storage.join(workdir, f"time_variance_T{num_steps}.json")
  storage.write_atomic(output, workdir_lib.dumps_strict(result, indent=2))
  base = result["antithetic"]["var_batch_mean"]
  print(
    f"{config.data.name}, step {step}, schedule {config.schedule.kind} "
    f"({config.schedule.objective}), T={num_steps}, {result['num_examples']} examples, "
    f"{reps} draws per scheme"
  )
  print(
    f"{'scheme':<24}{'bits/dim':>10}{'var(batch mean)':>18}{'var(example)':>15}{'vs antithetic':>15}"
  )
  for scheme in ("uniform", "antithetic", "importance", "importance_antithetic"):
    r = result[scheme]
    print(
      f"{scheme:<24}{r['bpd']:>10.4f}{r['var_batch_mean']:>18.3e}{r['var_per_example']:>15.3e}"
      f"{base / r['var_batch_mean']:>14.2f}x"
    )
  print(f"({result['seconds']:.1f} s) JSON: {output}")
  return result
