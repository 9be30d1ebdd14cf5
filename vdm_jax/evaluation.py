"""Bits/dim of a split, exactly: every example once per pass, fixed order, padded and masked.

Each example's ELBO is estimated with sampled t and noise (or, for discrete T with
`exact_time_sum`, with the diffusion term summed over all T steps). With P passes an
example's estimate is the mean of its P estimates; the reported error bar is the standard
error of the mean over examples, which contains the Monte Carlo noise of t and eps.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vdm_jax import data
from vdm_jax.vdm import VDM

__all__ = [
  "diffusion_by_time",
  "eval_step",
  "evaluate",
  "evaluate_ode",
  "jit_eval_step",
  "outputs",
  "per_example_terms",
  "public",
  "scalar_summary",
  "summarize",
  "time_sampling_variance",
]


def outputs(model) -> tuple[str, ...]:
  """What `eval_step` returns per example: the model's terms, "total" and (VDM) "t"."""
  return (*model.terms, "total", *(("t",) if isinstance(model, VDM) else ()))


def eval_step(params, batch: dict, key, t=None, *, vdm, num_steps: int):
  """Per-example ELBO terms (nats, `[B]`) and times of a batch. Pure; jit it.

  Args:
    vdm: the model (`VDM` or `vae.GaussianVAE`).
    t: optional explicit diffusion times `[B]` (sampled when None).
  """
  terms = vdm.loss_terms(params, batch["image"], key, train=False, num_steps=num_steps, t=t)
  return {name: terms[name] for name in outputs(vdm)}


def jit_eval_step(vdm, mesh, num_steps: int, *, explicit_t: bool = False):
  data_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  if explicit_t:
    return jax.jit(
      lambda params, batch, key, t: eval_step(params, batch, key, t, vdm=vdm, num_steps=num_steps),
      in_shardings=(replicated, data_sharding, replicated, data_sharding),
      out_shardings=data_sharding,
    )
  return jax.jit(
    lambda params, batch, key: eval_step(params, batch, key, vdm=vdm, num_steps=num_steps),
    in_shardings=(replicated, data_sharding, replicated),
    out_shardings=data_sharding,
  )


def per_example_terms(
  vdm,
  params,
  config,
  mesh,
  *,
  split: str,
  num_steps: int | None = None,
  key=None,
  batch_size: int | None = None,
  exact_time_sum: bool = False,
  progress: bool = False,
) -> dict:
  """One pass over `split`: per-example terms in nats, numpy `[N]` each, in split order.

  With `exact_time_sum` (discrete T only) the diffusion term of every example is the sum
  of its T denoising-matching terms, and "per_step" `[T]` holds each step's mean over the
  split (nats); "t" is then NaN.
  """
  from vdm_jax.train import to_global  # local: train imports this module

  num_steps = config.loss.num_steps if num_steps is None else num_steps
  if exact_time_sum and num_steps == 0:
    raise ValueError("exact_time_sum needs a discrete number of steps T > 0 (got T = 0).")
  batch_size = batch_size or config.eval.batch_size
  key = jax.random.key(config.seed + 1) if key is None else key
  step = jit_eval_step(vdm, mesh, num_steps, explicit_t=exact_time_sum)
  out = {name: [] for name in outputs(vdm)}
  per_step = np.zeros(max(num_steps, 1))
  batches = data.eval_batches(config.data, split, global_batch_size=batch_size)
  if progress and jax.process_index() == 0:
    from tqdm import tqdm

    total = -(-data.dataset_info(config.data).num_examples[split] // batch_size)
    batches = tqdm(batches, total=total, desc=f"{split} ({vdm.num_dims} dims)", leave=False)
  for b, batch in enumerate(batches):
    mask = np.asarray(multihost_utils.process_allgather(batch.pop("mask"), tiled=True)) > 0
    glob = to_global(batch, mesh)
    bkey = jax.random.fold_in(key, b)
    if exact_time_sum:
      local_rows = batch["image"].shape[0]
      diffusion = 0.0
      for i in range(1, num_steps + 1):
        t = to_global({"t": np.full(local_rows, i / num_steps, np.float32)}, mesh)["t"]
        terms = step(params, glob, jax.random.fold_in(bkey, i), t)
        d_i = (
          np.asarray(multihost_utils.process_allgather(terms["diffusion"], tiled=True)) / num_steps
        )
        diffusion = diffusion + d_i
        per_step[i - 1] += d_i[mask].sum()
      terms = jax.device_get(multihost_utils.process_allgather(terms, tiled=True))
      terms["diffusion"] = diffusion
      terms["t"] = np.full_like(diffusion, np.nan)
      terms["total"] = terms["recon"] + terms["prior"] + diffusion
    else:
      terms = jax.device_get(
        multihost_utils.process_allgather(step(params, glob, bkey), tiled=True)
      )
    for name in out:
      out[name].append(np.asarray(terms[name], np.float64)[mask])
  result = {name: np.concatenate(v) for name, v in out.items()}
  if exact_time_sum:
    result["per_step"] = per_step / result["total"].size
  return result


def summarize(terms: dict, num_dims: int) -> dict:
  """Mean bits/dim with its standard error over examples, and each term's mean in bits/dim.

  `terms` holds "total" and the model's terms, numpy `[N]` nats each.
  """
  to_bpd = 1.0 / (num_dims * math.log(2.0))
  total = terms["total"] * to_bpd
  n = total.size
  result = {
    "bpd": float(total.mean()),
    "bpd_se": float(total.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
    "num_examples": int(n),
  }
  for name in terms:
    if name not in ("total", "t"):
      result[f"{name}_bpd"] = float(terms[name].mean() * to_bpd)
  return result


def evaluate(
  vdm,
  params,
  config,
  mesh,
  *,
  split: str = "test",
  num_steps: int | None = None,
  passes: int = 1,
  key=None,
  batch_size: int | None = None,
  exact_time_sum: bool = False,
  progress: bool = False,
) -> dict:
  """Bits/dim of `split` with `params` (use the EMA params), averaged over `passes` passes.

  Returns:
    `summarize` of the per-example means over passes, plus "terms" (the model's term
    names), "passes", "pass_bpd" (each pass's mean), "num_steps", "split", and, under
    "_per_example"/"_per_step" (VDM only), the raw arrays (nats) for decompositions
    (keys starting with "_" are not scalars).
  """
  if passes < 1:
    raise ValueError(f"passes must be >= 1, got {passes}.")
  num_steps = config.loss.num_steps if num_steps is None else num_steps
  key = jax.random.key(config.seed + 1) if key is None else key
  runs = [
    per_example_terms(
      vdm,
      params,
      config,
      mesh,
      split=split,
      num_steps=num_steps,
      key=jax.random.fold_in(key, p),
      batch_size=batch_size,
      exact_time_sum=exact_time_sum,
      progress=progress,
    )
    for p in range(passes)
  ]
  mean_terms = {name: np.mean([r[name] for r in runs], axis=0) for name in (*vdm.terms, "total")}
  result = summarize(mean_terms, vdm.num_dims)
  to_bpd = 1.0 / (vdm.num_dims * math.log(2.0))
  result["terms"] = list(vdm.terms)
  result["passes"] = passes
  result["pass_bpd"] = [float(r["total"].mean() * to_bpd) for r in runs]
  result["num_steps"] = num_steps
  result["split"] = split
  if isinstance(vdm, VDM):
    result["_per_example"] = {
      "t": np.concatenate([r["t"] for r in runs]),
      "diffusion": np.concatenate([r["diffusion"] for r in runs]),
    }
  if exact_time_sum:
    result["_per_step"] = np.mean([r["per_step"] for r in runs], axis=0)
  return result


def diffusion_by_time(result: dict, vdm: VDM, params, *, num_bins: int = 20) -> list[dict]:
  """The diffusion term decomposed over t, in bits/dim, from an `evaluate` result.

  Continuous or sampled t: with t uniform, (1/N) sum_{n: t_n in bin} L_n estimates the bin's
  share of E_t[L(t)] = int_0^1 L(t) dt; the shares sum to the diffusion term. With
  `exact_time_sum` every one of the T steps is its own row (exact, no sampling).
  """
  if not isinstance(vdm, VDM):
    raise ValueError(f"{type(vdm).__name__} has no diffusion term to decompose over t.")
  to_bpd = 1.0 / (vdm.num_dims * math.log(2.0))
  if "_per_step" in result:
    per_step = result["_per_step"]
    num_steps = per_step.size
    edges = np.arange(num_steps + 1) / num_steps
    shares = per_step * to_bpd
  else:
    t, diffusion = result["_per_example"]["t"], result["_per_example"]["diffusion"]
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(t, edges[1:-1]), 0, num_bins - 1)
    shares = np.bincount(which, weights=diffusion, minlength=num_bins) / t.size * to_bpd
  gammas = np.asarray(vdm.gamma(params, jnp.asarray(edges, jnp.float32)), np.float64)
  return [
    {
      "t_lo": float(edges[i]),
      "t_hi": float(edges[i + 1]),
      "gamma_lo": float(gammas[i]),
      "gamma_hi": float(gammas[i + 1]),
      "bpd": float(shares[i]),
      "bpd_per_unit_t": float(shares[i] / (edges[i + 1] - edges[i])),
    }
    for i in range(len(shares))
  ]


def public(result: dict) -> dict:
  """`result` without its raw arrays (the keys starting with "_"): JSON-serialisable."""
  return {k: v for k, v in result.items() if not k.startswith("_")}


def scalar_summary(result: dict) -> dict:
  """bpd, its standard error and every term's bpd (the "<term>_bpd" keys)."""
  names = ("bpd", "bpd_se", *(f"{t}_bpd" for t in result["terms"]))
  return {k: result[k] for k in names}


def evaluate_ode(
  vdm: VDM,
  params,
  config,
  mesh,
  *,
  split: str = "test",
  key=None,
  batch_size: int | None = None,
  exact_divergence: bool | None = None,
  rtol: float = 1e-4,
  atol: float = 1e-4,
  progress: bool = False,
) -> dict:
  """Bits/dim of `split` under the probability-flow ODE (uniform dequantisation, see `ode`).

  `exact_divergence` defaults to exact traces for data of at most 8 dimensions and
  Hutchinson's estimator above. Returns "bpd", "bpd_se", "num_examples" and the settings.
  """
  from vdm_jax import ode
  from vdm_jax.train import to_global

  if not isinstance(vdm, VDM):
    raise ValueError(
      f"The probability-flow ODE needs a diffusion model; this is a {type(vdm).__name__}. "
      "Use the ELBO (--method=elbo)."
    )
  if exact_divergence is None:
    exact_divergence = vdm.num_dims <= 8
  batch_size = batch_size or config.eval.batch_size
  key = jax.random.key(config.seed + 2) if key is None else key
  data_sharding = NamedSharding(mesh, P("data"))
  fn = jax.jit(
    lambda p, k, kk: ode.dequantized_bpd(
      vdm, p, k, kk, exact_divergence=exact_divergence, rtol=rtol, atol=atol
    ),
    in_shardings=(NamedSharding(mesh, P()), data_sharding, NamedSharding(mesh, P())),
    out_shardings=data_sharding,
  )
  batches = data.eval_batches(config.data, split, global_batch_size=batch_size)
  if progress and jax.process_index() == 0:
    from tqdm import tqdm

    total = -(-data.dataset_info(config.data).num_examples[split] // batch_size)
    batches = tqdm(batches, total=total, desc=f"ODE {split}", leave=False)
  values = []
  for b, batch in enumerate(batches):
    mask = np.asarray(multihost_utils.process_allgather(batch.pop("mask"), tiled=True)) > 0
    bpd = fn(params, to_global(batch, mesh)["image"], jax.random.fold_in(key, b))
    values.append(np.asarray(multihost_utils.process_allgather(bpd, tiled=True), np.float64)[mask])
  bpd = np.concatenate(values)
  return {
    "bpd": float(bpd.mean()),
    "bpd_se": float(bpd.std(ddof=1) / math.sqrt(bpd.size)) if bpd.size > 1 else float("nan"),
    "num_examples": int(bpd.size),
    "split": split,
    "exact_divergence": bool(exact_divergence),
    "rtol": rtol,
    "atol": atol,
  }


def time_sampling_variance(
  vdm: VDM,
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
    vdm: a `VDM`; params: its (EMA) params; k: integer data `[B, *data_shape]`.
    num_steps: T (0 = continuous); in discrete time there are T bins.

  Returns:
    {scheme: {"bpd", "bpd_se_of_mean", "var_batch_mean", "var_per_example"}} (bits/dim;
    `var_batch_mean` is the variance over repetitions of the batch's mean bits/dim,
    `var_per_example` the variance over repetitions of one example's, averaged over
    examples), plus "proposal" (the bin probabilities) and the settings.
  """
  from vdm_jax import elbo

  batch = k.shape[0]
  num_bins = num_steps or num_bins
  to_bpd = 1.0 / (vdm.num_dims * math.log(2.0))

  @jax.jit
  def run(key, t, weight):
    return vdm.loss_terms(params, k, key, num_steps=num_steps, t=t, t_weight=weight)

  def draw(key, scheme, probs):
    key_t, key_l = jax.random.split(key)
    antithetic = scheme.endswith("antithetic")
    if scheme.startswith("importance"):
      t, w = elbo.importance_sample_times(
        key_t, batch, probs, num_steps=num_steps, antithetic=antithetic
      )
    else:
      t = elbo.sample_times(key_t, batch, num_steps=num_steps, antithetic=antithetic)
      w = jnp.ones_like(t)
    return run(key_l, t, w)

  # Pilot: the per-bin average of L(t)^2 under stratified uniform t (decay r/(r+1) makes
  # the running estimate an equal-weight mean of the pilot batches), then the proposal.
  moments = elbo.init_time_moments(num_bins)
  for r in range(pilot):
    terms = draw(jax.random.fold_in(key, 10_000 + r), "antithetic", None)
    moments = elbo.update_time_moments(
      moments, terms["t"], terms["diffusion"], decay=r / (r + 1), num_steps=num_steps
    )
  probs = elbo.importance_bin_probs(moments)

  result = {"num_examples": batch, "reps": reps, "pilot": pilot, "num_steps": num_steps}
  for scheme in ("uniform", "antithetic", "importance", "importance_antithetic"):
    totals = (
      np.stack(
        [
          np.asarray(draw(jax.random.fold_in(key, r), scheme, probs)["total"], np.float64)
          for r in range(reps)
        ]
      )
      * to_bpd
    )  # [reps, B]
    means = totals.mean(axis=1)
    result[scheme] = {
      "bpd": float(means.mean()),
      "bpd_se_of_mean": float(means.std(ddof=1) / math.sqrt(reps)),
      "var_batch_mean": float(means.var(ddof=1)),
      "var_per_example": float(totals.var(axis=0, ddof=1).mean()),
    }
  result["proposal"] = [float(p) for p in np.asarray(probs)]
  return result
