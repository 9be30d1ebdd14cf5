"""Bits/dim of a split, exactly: every example once per pass, padded and masked.

The result is a function of (params, split, seed, passes) only: it does not depend on the
evaluation batch size, the padding, the device count or the process count. Each example's
randomness is keyed by its position in the split (its noise is drawn from
`fold_in(pass_key, index)`), and its diffusion time comes from one antithetic draw
stratified over the whole split: t_n = 1 - ((u_0 + r_n / N) mod 1) for a random
permutation r of 0..N-1 (N the split's size), so every pass covers [0, 1) evenly with N
points whatever the batching. With `exact_time_sum` (discrete T) the diffusion term is
summed over all T steps instead.

The reported error bar, `bpd_se`, is the standard error of the mean over examples: the
spread of the per-example estimates (data and Monte Carlo noise of t and eps together)
divided by sqrt(N). It is the uncertainty of the split's bits/dim as an estimate of the
population's; the spread between passes over the same examples contains only the Monte
Carlo part and is smaller (tests check that it never exceeds `bpd_se` beyond what a
chi-square test allows).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vdm_jax import data, elbo
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
  "split_times",
  "summarize",
  "time_sampling_variance",
  "to_global",
]


def outputs(model) -> tuple[str, ...]:
  """What `eval_step` returns per example: the model's terms, "total" and (VDM) "t"."""
  return (*model.terms, "total", *(("t",) if isinstance(model, VDM) else ()))


def eval_step(params, batch: dict, key, t=None, *, vdm, num_steps: int):
  """Per-example ELBO terms (nats, `[B]`) and times of a batch. Pure; jit it.

  Example n draws its noise from `fold_in(key, batch["index"][n])`, so its terms do not
  depend on the other examples of the batch.

  Args:
    batch: {"image": int `[B, *data_shape]`, "index": int32 `[B]`, the examples' positions
      in the split}.
    vdm: the model (`VDM` or `vae.GaussianVAE`).
    t: optional explicit diffusion times `[B]` (VDM; sampled per example when None).
  """

  def one(k, index, t_n):
    terms = vdm.loss_terms(
      params,
      k[None],
      jax.random.fold_in(key, index),
      train=False,
      num_steps=num_steps,
      t=None if t_n is None else t_n[None],
    )
    return {name: terms[name][0] for name in outputs(vdm)}

  return jax.vmap(one)(batch["image"], batch["index"], t)


@functools.lru_cache(maxsize=16)
def jit_eval_step(vdm, mesh, num_steps: int, *, explicit_t: bool = False):
  """`eval_step` jitted over `mesh`, built once per (model, mesh, T): passes, evaluations
  during training and repeated calls reuse one compiled function."""
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


def split_times(key, num_examples: int, *, num_steps: int = 0) -> np.ndarray:
  """One diffusion time per example of a split, stratified over the whole split.

  An antithetic draw of N times (`elbo.sample_times`) assigned to the examples through a
  random permutation: every t is marginally uniform (unbiased), and the N times cover
  [0, 1) evenly. Returns float32 `[N]`, entry n for the example at position n.
  """
  key_u, key_perm = jax.random.split(key)
  times = elbo.sample_times(key_u, num_examples, num_steps=num_steps, antithetic=True)
  return np.asarray(times[jax.random.permutation(key_perm, num_examples)])


def _gather(x) -> np.ndarray:
  """A global jax.Array -> the whole array as numpy, on every process."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_global(batch: dict, mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays split over the mesh's "data" axis."""
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def _split_batches(config, split: str, batch_size: int, *, progress: bool, desc: str):
  """The split's evaluation batches (`data.eval_batches`), with a progress bar on process 0."""
  batches = data.eval_batches(config.data, split, global_batch_size=batch_size)
  if progress and jax.process_index() == 0:
    from tqdm import tqdm

    total = -(-data.dataset_info(config.data).num_examples[split] // batch_size)
    batches = tqdm(batches, total=total, desc=desc, leave=False)
  return batches


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

  `key` is the pass's key: example n's time is `split_times(k_t, N)[n]` and its noise is
  drawn from `fold_in(k_noise, n)`, (k_t, k_noise) = split(key); nothing depends on
  `batch_size`, the padding or the number of devices and processes.

  With `exact_time_sum` (discrete T only) the diffusion term of every example is the sum
  of its T denoising-matching terms (step i's noise from `fold_in(fold_in(k_noise, i), n)`),
  and "per_step" `[T]` holds each step's mean over the split (nats); "t" is then NaN.
  """
  num_steps = config.loss.num_steps if num_steps is None else num_steps
  if exact_time_sum and num_steps == 0:
    raise ValueError("exact_time_sum needs a discrete number of steps T > 0 (got T = 0).")
  batch_size = batch_size or config.eval.batch_size
  key = jax.random.key(config.seed + 1) if key is None else key
  key_t, key_noise = jax.random.split(key)
  diffusion_model = isinstance(vdm, VDM)
  num_examples = data.dataset_info(config.data).num_examples[split]
  times = (
    split_times(key_t, num_examples, num_steps=num_steps)
    if diffusion_model and not exact_time_sum
    else None
  )
  step = jit_eval_step(vdm, mesh, num_steps, explicit_t=diffusion_model)
  out = {name: [] for name in (*outputs(vdm), "index")}
  per_step = np.zeros(max(num_steps, 1))
  desc = f"{split} ({vdm.num_dims} dims)"
  for batch in _split_batches(config, split, batch_size, progress=progress, desc=desc):
    glob = to_global(batch, mesh)
    # Gathered from the global arrays, in the same row order as the step's outputs.
    mask, index = _gather(glob.pop("mask")) > 0, _gather(glob["index"])
    if exact_time_sum:
      local_rows = batch["image"].shape[0]
      diffusion = 0.0
      for i in range(1, num_steps + 1):
        t = to_global({"t": np.full(local_rows, i / num_steps, np.float32)}, mesh)["t"]
        terms = step(params, glob, jax.random.fold_in(key_noise, i), t)
        d_i = _gather(terms["diffusion"]) / num_steps
        diffusion = diffusion + d_i
        per_step[i - 1] += d_i[mask].sum()
      terms = jax.device_get(multihost_utils.process_allgather(terms, tiled=True))
      terms["diffusion"] = diffusion
      terms["t"] = np.full_like(diffusion, np.nan)
      terms["total"] = terms["recon"] + terms["prior"] + diffusion
    elif diffusion_model:
      t = to_global({"t": times[batch["index"]]}, mesh)["t"]
      terms = jax.device_get(
        multihost_utils.process_allgather(step(params, glob, key_noise, t), tiled=True)
      )
    else:
      terms = jax.device_get(
        multihost_utils.process_allgather(step(params, glob, key_noise), tiled=True)
      )
    terms["index"] = index
    for name in out:
      out[name].append(np.asarray(terms[name])[mask])
  order = np.argsort(np.concatenate(out.pop("index")))
  result = {name: np.concatenate(v).astype(np.float64)[order] for name, v in out.items()}
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
    `summarize` of the per-example means over passes ("bpd_se": the standard error over
    examples), plus "terms" (the model's term names), "passes", "pass_bpd" (each pass's
    mean), "pass_se" (the spread of the pass means / sqrt(P): the Monte Carlo error alone,
    NaN for one pass), "num_steps", "split", and, under
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
  # The Monte Carlo part alone: how far another P passes over the same examples would move.
  result["pass_se"] = (
    float(np.std(result["pass_bpd"], ddof=1) / math.sqrt(passes)) if passes > 1 else float("nan")
  )
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

  def per_example(p, k, index):
    # One solve per example (vmapped): the adaptive step sizes, the dequantisation noise
    # and the probes of example n do not depend on the rest of its batch.
    return ode.dequantized_bpd(
      vdm,
      p,
      k[None],
      jax.random.fold_in(key, index),
      exact_divergence=exact_divergence,
      rtol=rtol,
      atol=atol,
    )[0]

  fn = jax.jit(
    jax.vmap(per_example, in_axes=(None, 0, 0)),
    in_shardings=(NamedSharding(mesh, P()), data_sharding, data_sharding),
    out_shardings=data_sharding,
  )
  values, indices = [], []
  for batch in _split_batches(config, split, batch_size, progress=progress, desc=f"ODE {split}"):
    glob = to_global(batch, mesh)
    mask = _gather(glob["mask"]) > 0
    values.append(_gather(fn(params, glob["image"], glob["index"])).astype(np.float64)[mask])
    indices.append(_gather(glob["index"])[mask])
  bpd = np.concatenate(values)[np.argsort(np.concatenate(indices))]
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
