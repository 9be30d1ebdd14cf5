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

A class-conditional model (`model.num_classes` = C > 0) is evaluated under every label with
the same times and noise (C + 2 passes of the network per pass over the split): its
headline "bpd" is the marginal bound -log sum_y p(y) exp(ELBO_y(x)) with the uniform label
prior, comparable with an unconditional model's bits/dim; "bpd_conditional" (-log p(x | y),
the example's own label) and "bpd_null" (the null-label sub-model) come beside it
(`label_bounds`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import data, elbo, streams, times
from vdm_jax._arith import ceil_div, round_up
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.runtime import signals as _signals

__all__ = [
  "NonFiniteEvaluationError",
  "balanced_batch_size",
  "check_finite",
  "diffusion_by_time",
  "eval_step",
  "evaluate",
  "evaluation_key",
  "evaluation_seed",
  "exact_time_sum_step",
  "global_batches",
  "jit_eval_step",
  "jit_exact_time_sum",
  "cross_fitted_marginal_nats",
  "held_out_marginal_nats",
  "label_bounds",
  "marginal_nats",
  "outputs",
  "per_example_terms",
  "per_label_totals",
  "public",
  "without_arrays",
  "scalar_summary",
  "split_times",
  "summarize",
]


EVAL_SEED_OFFSET = streams.EVALUATION
"""An evaluation's default seed is `config.seed + EVAL_SEED_OFFSET` (`evaluation_seed`)."""


def evaluation_seed(config, seed: int | None = None) -> int:
  """The seed of an ELBO evaluation's randomness (times t, noise; the ODE's dequantisation
  and probes): `seed`, or by default the run's evaluation seed, `config.seed + 1`.

  The one place that decides it: the evaluations during and at the end of training use the
  default, and so does `vdm-evaluate` without `--seed`, so both give the same bits/dim on
  the same checkpoint (same split, T and passes). The evaluation JSON records it as "seed".
  """
  return config.seed + EVAL_SEED_OFFSET if seed is None else int(seed)


def evaluation_key(config, seed: int | None = None):
  """`jax.random.key(evaluation_seed(config, seed))`; pass p uses `fold_in(key, p)`."""
  return jax.random.key(evaluation_seed(config, seed))


class NonFiniteEvaluationError(ValueError):
  """An evaluation gave a non-finite bits/dim; nothing was recorded."""


def check_finite(result: dict, params, what: str, then: str) -> None:
  """Raises `NonFiniteEvaluationError` if `result["bpd"]` is NaN or infinite.

  The message: "<what> gave bits/dim nan: its EMA parameters hold non-finite values" (or
  "are finite but give a non-finite ELBO"), then `then` (what was not written, the way
  out). Every process computes the same result, so all raise together.
  """
  if math.isfinite(result["bpd"]):
    return
  from vdm_jax.runtime import checkpoints  # orbax: only once something is wrong

  why = (
    "hold non-finite values"
    if checkpoints.non_finite_fields({"ema_params": params})
    else "are finite but give a non-finite ELBO: training diverged"
  )
  raise NonFiniteEvaluationError(
    f"{what} gave bits/dim {result['bpd']}: its EMA parameters {why}. {then}"
  )


def outputs(model) -> tuple[str, ...]:
  """What `eval_step` returns per example: the model's terms, "total" and (diffusion) "t"."""
  return (*model.terms, "total", *(("t",) if model.diffusion_time else ()))


def eval_step(params, batch: dict, key, t=None, *, model, num_steps: int):
  """Per-example ELBO terms (nats, `[B]`) and times of a batch. Pure; jit it.

  Example n draws its noise from `fold_in(key, batch["index"][n])`, so its terms do not
  depend on the other examples of the batch.

  Args:
    batch: {"image": int `[B, *data_shape]`, "index": int32 `[B]`, the examples' positions
      in the split, and any other fields (e.g. "label" `[B]`)}, each example's given whole
      to the model.
    model: the model (a `models.Model`).
    t: optional explicit diffusion times `[B]` (diffusion models; sampled when None).
  """

  def one(example, t_n):
    example_key = jax.random.fold_in(key, example["index"])
    example = jax.tree.map(lambda v: v[None], example)
    if model.diffusion_time:
      t_n = None if t_n is None else t_n[None]
      terms = model.loss_terms(params, example, example_key, num_steps=num_steps, t=t_n)
    else:
      terms = model.loss_terms(params, example, example_key)
    return {name: terms[name][0] for name in outputs(model)}

  return jax.vmap(one)(batch, t)


@functools.lru_cache(maxsize=16)
def jit_eval_step(model, mesh, num_steps: int, *, explicit_t: bool = False):
  """`eval_step` jitted over `mesh`, built once per (model, mesh, T): passes, evaluations
  during training and repeated calls reuse one compiled function."""
  data_sharding, replicated = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)
  if explicit_t:
    return jax.jit(
      lambda params, batch, key, t: eval_step(
        params, batch, key, t, model=model, num_steps=num_steps
      ),
      in_shardings=(replicated, data_sharding, replicated, data_sharding),
      out_shardings=data_sharding,
    )
  return jax.jit(
    lambda params, batch, key: eval_step(params, batch, key, model=model, num_steps=num_steps),
    in_shardings=(replicated, data_sharding, replicated),
    out_shardings=data_sharding,
  )


def split_times(key, num_examples: int, *, num_steps: int = 0) -> np.ndarray:
  """One diffusion time per example of a split, stratified over the whole split.

  An antithetic draw of N times (`times.sample_times`) assigned to the examples through a
  random permutation: every t is marginally uniform (unbiased), and the N times cover
  [0, 1) evenly. Returns float32 `[N]`, entry n for the example at position n.
  """
  key_u, key_perm = jax.random.split(key)
  t = times.sample_times(key_u, num_examples, num_steps=num_steps, antithetic=True)
  return np.asarray(t[jax.random.permutation(key_perm, num_examples)])


EXACT_SUM_ROWS = 2048  # examples x steps per network call of the exact time sum


def balanced_batch_size(num_examples: int, batch_size: int, num_devices: int) -> int:
  """The smallest batch size, a multiple of `num_devices`, that covers the split in as few
  batches as `batch_size` does: 300 examples at 256 become 2 batches of 152, not 256 + 44
  padded to 256. Padding rows cost a full network call each and are discarded; results
  do not depend on the batch size, so this only saves time."""
  num_batches = ceil_div(num_examples, batch_size)
  per_batch = ceil_div(num_examples, num_batches)
  return round_up(per_batch, num_devices)


def global_batches(config, split: str, batch_size: int, mesh, *, progress: bool, desc: str):
  """The split's evaluation batches as global arrays over `mesh`, with a progress bar on
  process 0.

  Yields:
    (batch, glob, mask, index): `batch` the process-local numpy batch (`data.eval_batches`:
    "image", "index" and "mask", padded to `batch_size`), `glob` its global jax.Arrays
    without "mask", and `mask` (bool) and `index` the whole batch's, as numpy, on every
    process, in the row order of the steps' outputs.
  """
  batches = data.eval_batches(config.data, split, global_batch_size=batch_size)
  if progress and jax.process_index() == 0:
    from tqdm import tqdm

    total = ceil_div(data.dataset_info(config.data).num_examples[split], batch_size)
    batches = tqdm(batches, total=total, desc=desc, leave=False)
  for batch in batches:
    if jax.process_count() == 1:  # several: the signal is honoured after the evaluation
      _signals.check("during the evaluation; nothing was written")
    glob = mesh_lib.to_global(batch, mesh)
    mask, index = mesh_lib.gather((glob.pop("mask"), glob["index"]))
    yield batch, glob, np.asarray(mask) > 0, np.asarray(index)


def per_example_terms(
  model,
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
  label: int | None = None,
) -> dict:
  """One pass over `split`: per-example terms in nats, numpy `[N]` each, in split order.

  `label` (class-conditional models): every example is evaluated under this label (C for
  the null label) instead of its own; the times and noise do not change with it. When the
  split has labels, "label" `[N]` holds each example's own.

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
  key = evaluation_key(config) if key is None else key
  key_t, key_noise = jax.random.split(key)
  num_examples = data.dataset_info(config.data).num_examples[split]
  times_ = (
    split_times(key_t, num_examples, num_steps=num_steps)
    if model.diffusion_time and not exact_time_sum
    else None
  )
  batch_size = balanced_batch_size(num_examples, batch_size, jax.device_count())
  if exact_time_sum:
    # Steps per vmapped chunk: one at a time on CPU (measured: vmapping 8 steps is slower
    # there), about EXACT_SUM_ROWS network rows per call on accelerators.
    chunk = 1 if jax.default_backend() == "cpu" else EXACT_SUM_ROWS // batch_size
    step = jit_exact_time_sum(model, mesh, num_steps, max(1, min(num_steps, chunk)))
  else:
    step = jit_eval_step(model, mesh, num_steps, explicit_t=model.diffusion_time)
  out = {name: [] for name in (*outputs(model), "index")}
  labels = []
  per_step = np.zeros(max(num_steps, 1))
  desc = f"{split} ({model.num_dims} dims)" + ("" if label is None else f", label {label}")
  for batch, glob, mask, index in global_batches(
    config, split, batch_size, mesh, progress=progress, desc=desc
  ):
    if "label" in glob:
      labels.append(np.asarray(mesh_lib.gather(glob["label"]))[mask])
      if label is not None:
        same = {"label": np.full_like(batch["label"], label)}
        glob["label"] = mesh_lib.to_global(same, mesh)["label"]
    elif label is not None:
      raise ValueError(f"Split {split!r} has no labels to replace by label {label}.")
    if exact_time_sum:
      terms, by_step = mesh_lib.gather(step(params, glob, key_noise))
      per_step += np.asarray(by_step, np.float64)[:, mask].sum(axis=1)
    elif model.diffusion_time:
      t = mesh_lib.to_global({"t": times_[batch["index"]]}, mesh)["t"]
      terms = mesh_lib.gather(step(params, glob, key_noise, t))
    else:
      terms = mesh_lib.gather(step(params, glob, key_noise))
    terms["index"] = index
    for name in out:
      out[name].append(np.asarray(terms[name])[mask])
  order = np.argsort(np.concatenate(out.pop("index")))
  result = {name: np.concatenate(v).astype(np.float64)[order] for name, v in out.items()}
  if labels:
    result["label"] = np.concatenate(labels)[order]
  if exact_time_sum:
    result["per_step"] = per_step / result["total"].size
  return result


def exact_time_sum_step(params, batch: dict, key, *, model, num_steps: int, chunk: int = 0):
  """Per-example terms with the diffusion term summed over all T steps, on the device.

  Step i (t = i/T) draws example n's noise from `fold_in(fold_in(key, i), index_n)`, as
  `eval_step(params, batch, fold_in(key, i), t=i/T)` would; the T steps run as one
  `lax.map` (`chunk` steps at a time, vmapped; 0 = all T at once), so a batch costs one
  dispatch and one gather instead of T. "recon", "prior" and the model's other terms
  (e.g. an auxiliary latent's "latent_kl") are step T's draws. A model with an auxiliary
  latent c draws c afresh at every step: each term is still an unbiased estimate of its
  expectation under q(c | x), so their sum estimates the same bound.

  Returns:
    (terms, by_step): terms as `eval_step`'s ("t" NaN), by_step `[T, B]` each step's
    diffusion term / T (nats), whose sum over steps is "diffusion".
  """

  def one_step(i):
    t = jnp.full(batch["index"].shape, i / num_steps, jnp.float32)
    terms = eval_step(
      params, batch, jax.random.fold_in(key, i), t, model=model, num_steps=num_steps
    )
    return {
      "diffusion": terms["diffusion"] / num_steps,
      **{n: terms[n] for n in model.terms if n != "diffusion"},
    }

  steps = jnp.arange(1, num_steps + 1)
  per_step = jax.lax.map(one_step, steps, batch_size=min(chunk or num_steps, num_steps))
  by_step = per_step["diffusion"]
  terms = {n: per_step[n][-1] for n in model.terms if n != "diffusion"}  # step T's draws
  terms["diffusion"] = by_step.sum(axis=0)
  total = terms[model.terms[0]]
  for name in model.terms[1:]:  # in the model's order: recon + prior + diffusion for the VDM
    total = total + terms[name]
  terms["total"] = total
  terms["t"] = jnp.full_like(terms["diffusion"], jnp.nan)
  return terms, by_step


@functools.lru_cache(maxsize=16)
def jit_exact_time_sum(model, mesh, num_steps: int, chunk: int = 0):
  """`exact_time_sum_step` jitted over `mesh`, built once per (model, mesh, T, chunk)."""
  data_sharding, replicated = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)
  by_step_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
  return jax.jit(
    functools.partial(exact_time_sum_step, model=model, num_steps=num_steps, chunk=chunk),
    in_shardings=(replicated, data_sharding, replicated),
    out_shardings=(data_sharding, by_step_sharding),
  )


def summarize(terms: dict, num_dims: int) -> dict:
  """Mean bits/dim with its standard error over examples, and each term's mean in bits/dim.

  `terms` holds "total" and the model's terms, numpy `[N]` nats each. "bpd_se" is NaN for
  one example (not defined; null in the JSON files).
  """
  total = elbo.bits_per_dim(terms["total"], num_dims)
  n = total.size
  result = {
    "bpd": float(total.mean()),
    "bpd_se": float(total.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
    "num_examples": int(n),
  }
  for name in terms:
    if name not in ("total", "t"):
      result[f"{name}_bpd"] = float(elbo.bits_per_dim(terms[name].mean(), num_dims))
  return result


def _log_prior(log_prior, num_classes: int) -> np.ndarray:
  """log p(c) `[C]` as float64; None is the uniform prior, -log C."""
  if log_prior is None:
    return np.full(num_classes, -math.log(num_classes))
  return np.asarray(log_prior, np.float64)


def per_label_totals(model, params, config, mesh, *, key, num_labels: int, **options):
  """Nats `[N, num_labels]` in split order: one pass's total of every example under each
  label 0..num_labels-1 (num_labels = C + 1 includes the null label), with the same times
  and noise for every label (`per_example_terms` with `label`; `options` are its own)."""
  return np.stack(
    [
      per_example_terms(model, params, config, mesh, key=key, label=c, **options)["total"]
      for c in range(num_labels)
    ],
    axis=1,
  )


def marginal_nats(per_class, log_prior=None) -> np.ndarray:
  """-log sum_c p(c) exp(-L_c) per example (nats, float64 `[N]`) from per-class totals.

  Each L_c(x) bounds -log p(x | c), so the result bounds -log p(x) = -log sum_c p(c)
  p(x | c). Computed as a log-sum-exp shifted by its largest term (no overflow or
  underflow however large L is). With m = min_c (L_c - log p(c)) it lies in [m - log C, m];
  for the uniform prior: min_c L_c <= result <= min_c L_c + log C.

  Args:
    per_class: nats `[N, C]`.
    log_prior: log p(c) `[C]`; None: the uniform prior, log p(c) = -log C.

  Example:
    >>> marginal_nats(np.array([[1000.0, 1000.0]])).round(6).tolist()   # equal: no gain
    [1000.0]
  """
  per_class = np.asarray(per_class, np.float64)
  num_classes = per_class.shape[-1]
  a = _log_prior(log_prior, num_classes) - per_class
  top = a.max(axis=-1, keepdims=True)
  return -(top[..., 0] + np.log(np.exp(a - top).sum(axis=-1)))


def cross_fitted_marginal_nats(estimates, pilots, log_prior=None) -> np.ndarray:
  """An estimate of a valid bound on -log p(x) from noisy per-class estimates: nats `[N]`.

  `marginal_nats` of Monte Carlo estimates L^_c (unbiased for the bounds L_c) is biased low:
  the log-sum-exp is concave in -L, so E[-log sum_c p(c) exp(-L^_c)] <= -log sum_c p(c)
  exp(-L_c) (Jensen), and the bias grows with the estimates' noise. For any weights w_c
  (positive, summing to 1), Jensen's inequality the other way gives
  -log p(x) <= sum_c w_c (L_c - log p(c) + log w_c), which is linear in the L_c: with w
  chosen independently of the estimates it is estimated without bias, so the estimate is a
  valid bound in expectation. The weights are the softmax of log p(c) - pilot_c, taken
  from independent pilot estimates: the optimum, for which the bound equals the log-sum-
  exp, when the pilots are exact.

  Args:
    estimates: nats `[P, N, C]`: P independent estimates of each example's L_c.
    pilots: nats `[P, N, C]`: for each p, estimates independent of `estimates[p]` (e.g. the
      mean of the other passes), from which that pass's weights are taken.
    log_prior: log p(c) `[C]`; None: uniform.

  Returns:
    The mean over p of sum_c w_c (estimates[p, :, c] - log p(c) + log w_c), nats `[N]`.

  Example (exact pilots: the log-sum-exp itself):
    >>> L = np.array([[[3.0, 5.0]]])
    >>> float(cross_fitted_marginal_nats(L, L)[0].round(6)) == float(marginal_nats(L[0])[0].round(6))
    True
  """
  estimates = np.asarray(estimates, np.float64)
  pilots = np.asarray(pilots, np.float64)
  if estimates.ndim != 3 or pilots.shape != estimates.shape:
    raise ValueError(
      f"estimates and pilots must both be [P, N, C]; got {estimates.shape} and {pilots.shape}."
    )
  num_classes = estimates.shape[-1]
  log_prior = _log_prior(log_prior, num_classes)
  a = log_prior - pilots
  log_w = a - a.max(axis=-1, keepdims=True)
  log_w = log_w - np.log(np.exp(log_w).sum(axis=-1, keepdims=True))
  bound = (np.exp(log_w) * (estimates - log_prior + log_w)).sum(axis=-1)
  return bound.mean(axis=0)


def held_out_marginal_nats(estimate, pool, labels, log_prior=None) -> tuple[np.ndarray, str]:
  """`cross_fitted_marginal_nats` with the better of two label weightings, chosen on
  held-out draws: nats `[N]` and the weighting's name.

  The bound -log p(x) <= sum_c w_c (L_c - log p(c) + log w_c) holds for any weights, and
  its estimate stays a bound in expectation while the weights (and the choice between
  weightings) depend only on draws independent of `estimate`. Two weightings:
  "posterior", the softmax of log p(c) - (the pool's mean), which is exact for exact
  pilots but pays for noisy ones wherever it puts weight on a wrong class; and "label",
  all weight on the example's own label, which gives L_y - log p(y) (the conditional
  bound plus log C for the uniform prior) and costs at most -log p(y | x) per example.
  The one with the lower mean is chosen by fitting the posterior weights on half the
  pool (draws 0, 2, ...) and evaluating both on the other half (1, 3, ...); the chosen
  weighting is then fitted on the whole pool and applied to `estimate`.

  Args:
    estimate: nats `[N, C]`: one draw of each example's L_c.
    pool: nats `[K, N, C]`, K >= 2 draws independent of `estimate` (and of each other).
    labels: each example's own label `[N]`.
    log_prior: log p(c) `[C]`; None: uniform.

  Returns:
    (nats `[N]`, "posterior" or "label").

  Example (the fitting half favours class 0, the checking half the example's label 1, so
  the label weighting wins on the held-out half):
    >>> pool = np.array([[[3.0, 9.0]], [[9.0, 3.0]]])
    >>> nats, rule = held_out_marginal_nats(np.array([[4.0, 5.0]]), pool, np.array([1]))
    >>> rule, float(nats[0].round(3))  # 5 + log 2: all weight on label 1
    ('label', 5.693)
  """
  estimate = np.asarray(estimate, np.float64)
  pool = np.asarray(pool, np.float64)
  labels = np.asarray(labels)
  if pool.ndim != 3 or pool.shape[0] < 2 or pool.shape[1:] != estimate.shape:
    raise ValueError(
      f"pool must be [K >= 2, N, C] with [N, C] = {estimate.shape}; got {pool.shape}."
    )
  num_classes = estimate.shape[-1]
  log_prior = _log_prior(log_prior, num_classes)
  rows = np.arange(estimate.shape[0])

  def by_label(values):
    return values[rows, labels] - log_prior[labels]

  fit, check = pool[0::2].mean(axis=0), pool[1::2].mean(axis=0)
  posterior_on_check = cross_fitted_marginal_nats(check[None], fit[None], log_prior).mean()
  if posterior_on_check <= by_label(check).mean():
    return cross_fitted_marginal_nats(
      estimate[None], pool.mean(axis=0)[None], log_prior
    ), "posterior"
  return by_label(estimate), "label"


def label_bounds(per_label, labels, num_dims: int, *, marginal=None) -> dict:
  """A class-conditional model's three bounds, in bits/dim with standard errors over examples.

  Args:
    per_label: nats `[N, C + 1]`, example n's total under label c, column C the null
      label's; all labels of an example evaluated with the same times and noise.
    labels: each example's own label `[N]`.
    num_dims: D, for bits/dim.

  Returns:
    "bpd" (the marginal bound, `marginal_nats` of columns 0..C-1 with the uniform prior),
    "bpd_conditional" (column labels[n]: -log p(x | y)), "bpd_null" (column C), each with
    "<name>_se", "label_prior" ("uniform") and "num_classes".

  The uniform prior needs no pass over the training labels; for a training split with
  label frequencies f(c) the marginal under f differs from it by at most
  log(C max_c f(c)) nats per example (each term of the sum changes by at most that factor).
  `marginal` (nats `[N]`), when given, is used for "bpd" instead: `evaluate` passes
  `held_out_marginal_nats`, because `marginal_nats` of Monte Carlo estimates is biased
  low (Jensen's inequality); it is exact only for exact per-label values.
  """
  per_label = np.asarray(per_label, np.float64)
  labels = np.asarray(labels)
  n, num_classes = per_label.shape[0], per_label.shape[1] - 1
  if labels.shape != (n,) or n == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
      f"labels must be {n} integers in [0, {num_classes}) for per_label of shape "
      f"{per_label.shape}; got shape {labels.shape}."
    )
  out = {}
  for name, nats in [
    ("bpd", marginal_nats(per_label[:, :num_classes]) if marginal is None else marginal),
    ("bpd_conditional", per_label[np.arange(n), labels]),
    ("bpd_null", per_label[:, num_classes]),
  ]:
    bits = np.asarray(elbo.bits_per_dim(nats, num_dims), np.float64)
    out[name] = float(bits.mean())
    out[name + "_se"] = float(bits.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
  return out | {"label_prior": "uniform", "num_classes": int(num_classes)}


def evaluate(
  model,
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

  `key` defaults to the run's `evaluation_key(config)`; pass p draws from `fold_in(key, p)`.

  Returns:
    `summarize` of the per-example means over passes ("bpd_se": the standard error over
    examples), plus "terms" (the model's term names), "passes", "pass_bpd" (each pass's
    mean), "pass_se" (the spread of the pass means / sqrt(P): the Monte Carlo error alone,
    NaN for one pass, where it is not defined; the JSON files record it as null), "num_steps",
    "split", and, under
    "_per_example"/"_per_step" (VDM only), the raw arrays (nats) for decompositions
    (keys starting with "_" are not scalars).

    A class-conditional model adds `label_bounds` (its "bpd" and "bpd_se" are the marginal
    bound's, `held_out_marginal_nats` of each pass, and so is "pass_bpd"; which label
    weighting each pass used is "marginal_weights"); the "<term>_bpd" and the
    decomposition over t are those of the conditional bound, whose sum is
    "bpd_conditional"; "_per_label" (nats `[N, C + 1]`, the mean over passes) and
    "_labels" `[N]` hold what the bounds are from.
  """
  if passes < 1:
    raise ValueError(f"passes must be >= 1, got {passes}.")
  num_steps = config.loss.num_steps if num_steps is None else num_steps
  key = evaluation_key(config) if key is None else key
  num_classes = getattr(model, "num_classes", 0)
  options = {
    "split": split,
    "num_steps": num_steps,
    "batch_size": batch_size,
    "exact_time_sum": exact_time_sum,
    "progress": progress,
  }
  one_pass = functools.partial(per_example_terms, model, params, config, mesh, **options)
  runs = [one_pass(key=jax.random.fold_in(key, p)) for p in range(passes)]
  mean_terms = {name: np.mean([r[name] for r in runs], axis=0) for name in (*model.terms, "total")}
  result = summarize(mean_terms, model.num_dims)
  result["terms"] = list(model.terms)
  result["passes"] = passes
  result["pass_bpd"] = [float(elbo.bits_per_dim(r["total"].mean(), model.num_dims)) for r in runs]
  if num_classes:
    if "label" not in runs[0]:
      raise ValueError(
        f"A class-conditional model needs a labelled split; split {split!r} of "
        f"{config.data.name!r} has no labels."
      )
    labelled = functools.partial(per_label_totals, model, params, config, mesh, **options)
    # [P, N, C + 1]: every label with the pass's times and noise (paired).
    per_label = np.stack(
      [labelled(key=jax.random.fold_in(key, p), num_labels=num_classes + 1) for p in range(passes)]
    )
    labels = runs[0]["label"]
    # The marginal's label weights, and the choice of weighting, come from draws
    # independent of the pass they weight: the other passes, topped up to at least two
    # draws with extra ones (keys fold_in(key, P), ...: the passes P, ... of a longer
    # evaluation), so the estimate stays a bound (held_out_marginal_nats).
    estimates = per_label[:, :, :num_classes]
    extras = [
      labelled(key=jax.random.fold_in(key, passes + i), num_labels=num_classes)
      for i in range(max(0, 3 - passes))
    ]
    draws = np.concatenate([estimates, *[e[None] for e in extras]])
    chosen = [
      held_out_marginal_nats(estimates[p], np.delete(draws, p, axis=0), labels)
      for p in range(passes)
    ]
    marginal = [nats for nats, _ in chosen]
    rules = [rule for _, rule in chosen]
    result["marginal_weights"] = ", ".join(
      f"{rule} ({rules.count(rule)} of {passes} passes)" for rule in sorted(set(rules))
    )
    result |= label_bounds(
      per_label.mean(axis=0), labels, model.num_dims, marginal=np.mean(marginal, axis=0)
    )
    result["_per_label"], result["_labels"] = per_label.mean(axis=0), labels
    result["pass_bpd"] = [float(elbo.bits_per_dim(m.mean(), model.num_dims)) for m in marginal]
  # The Monte Carlo part alone: how far another P passes over the same examples would move.
  result["pass_se"] = (
    float(np.std(result["pass_bpd"], ddof=1) / math.sqrt(passes)) if passes > 1 else float("nan")
  )
  result["num_steps"] = num_steps
  result["split"] = split
  if model.diffusion_time:
    result["_per_example"] = {
      "t": np.concatenate([r["t"] for r in runs]),
      "diffusion": np.concatenate([r["diffusion"] for r in runs]),
    }
  if exact_time_sum:
    result["_per_step"] = np.mean([r["per_step"] for r in runs], axis=0)
  return result


def diffusion_by_time(result: dict, model, params, *, num_bins: int = 20) -> list[dict]:
  """The diffusion term decomposed over t, in bits/dim, from an `evaluate` result.

  Continuous or sampled t: with t uniform, (1/N) sum_{n: t_n in bin} L_n estimates the bin's
  share of E_t[L(t)] = int_0^1 L(t) dt; the shares sum to the diffusion term. With
  `exact_time_sum` every one of the T steps is its own row (exact, no sampling).
  """
  if not model.diffusion_time:
    raise ValueError(f"{type(model).__name__} has no diffusion term to decompose over t.")
  if "_per_step" in result:
    per_step = result["_per_step"]
    num_steps = per_step.size
    edges = np.arange(num_steps + 1) / num_steps
    shares = elbo.bits_per_dim(per_step, model.num_dims)
  else:
    t, diffusion = result["_per_example"]["t"], result["_per_example"]["diffusion"]
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    which = np.clip(np.digitize(t, edges[1:-1]), 0, num_bins - 1)
    sums = np.bincount(which, weights=diffusion, minlength=num_bins) / t.size
    shares = elbo.bits_per_dim(sums, model.num_dims)
  gammas = np.asarray(model.gamma(params, jnp.asarray(edges, jnp.float32)), np.float64)
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


def without_arrays(result: dict) -> dict:
  """`result` without its raw arrays (the keys starting with "_"): JSON-serialisable."""
  return {k: v for k, v in result.items() if not k.startswith("_")}


def public(result: dict) -> dict:
  """Deprecated name of `without_arrays` (it warns)."""
  import warnings

  warnings.warn("bpd.public is renamed bpd.without_arrays.", DeprecationWarning, stacklevel=2)
  return without_arrays(result)


def scalar_summary(result: dict) -> dict:
  """bpd, its standard error and every term's bpd (the "<term>_bpd" keys); a class-
  conditional model's conditional and null-label bounds with theirs."""
  names = ("bpd", "bpd_se", *(f"{t}_bpd" for t in result["terms"]))
  bounds = ("bpd_conditional", "bpd_conditional_se", "bpd_null", "bpd_null_se")
  return {k: result[k] for k in names} | {k: result[k] for k in bounds if k in result}
