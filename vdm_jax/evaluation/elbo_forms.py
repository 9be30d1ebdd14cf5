r"""The derivation's ELBO forms side by side: same -ELBO, different Monte Carlo variance.

  vdm-elbo-forms --target=gaussian --output=runs/elbo_forms_gaussian.json
  vdm-elbo-forms --target=checkpoint --workdir=runs/digits

In Python: `print(render(compare_forms("gaussian", num_samples=16)))`; `write_result(result,
path)` writes the JSON (nothing here prints or writes unless asked).

For the N-step Markovian hierarchical VAE of `vdm_jax.hvae` (latents on t_j = j/N) the
negative ELBO has several unbiased estimators, all computed here from the SAME forward
trajectories (the same keys for every form, so their means compare by paired differences):

* consistency: the derivation's first form, two random latents per step, with the analytic
  Gaussian bridge (`hvae.negative_elbo_consistency`);
* denoising: the derivation's denoising-matching form (`hvae.negative_elbo_denoising`);
* sampled: log q(z|x) - log p(x, z) on the sampled trajectory (`hvae.negative_elbo_sampled`);
* one-step: what VDM trains and evaluates with, recon + prior + N KL_i at one uniformly
  drawn step i (one denoiser call instead of N; `--one_step`);
* literal (`--literal`): the derivation's consistency form taken literally, KL(q(z_j|z_{j-1}) ||
  p(z_j|z_{j+1})), which is biased (it assumes q(z_{j-1}, z_j, z_{j+1}|x) factorises as
  q(z_{j-1}, z_{j+1}|x) q(z_j|z_{j-1})); reported, never counted as agreeing.

Per example, `--num_samples` independent trajectories give the per-example mean and
variance of each form. The table reports the average -ELBO (nats per example, bits/dim)
with two standard errors (over examples: that of a test-set average; Monte Carlo: given
the examples), the average per-example variance, its ratio to the denoising form's, and
the paired difference to the denoising form with its Monte Carlo standard error.

Targets: `gaussian` is x ~ N(0.3, 0.5^2) per dimension with the Bayes-optimal denoiser
E[x | z_t] (and, by default, 0.5 times it and zero, to show how the variance ranking
depends on the model), a Gaussian decoder and a fixed linear schedule; the exact
-log p(x) is printed as the bound's floor. `checkpoint` is a trained VDM (EMA params) on
the first `--num_examples` examples of a split, with the framework's discrete decoder.
"""

from __future__ import annotations

import math
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import data, elbo, gaussian, hvae, schedules, testing
from vdm_jax._arith import ceil_div
from vdm_jax.evaluation import runs
from vdm_jax.runtime import storage
from vdm_jax.runtime import workdir as workdir_lib

__all__ = [
  "COLUMNS",
  "GAUSSIAN_MODELS",
  "UNBIASED",
  "agreement_line",
  "checkpoint_target",
  "compare_forms",
  "estimates",
  "format_table",
  "forms_table",
  "gaussian_target",
  "measure",
  "negative_elbo_one_step",
  "render",
  "report",
  "summarize",
  "summarize_forms",
  "write_result",
]

UNBIASED = ("consistency", "denoising", "sampled", "one-step")
"""The forms that estimate the same -ELBO without bias (the literal form is biased)."""
GAUSSIAN_MEAN, GAUSSIAN_STD = 0.3, 0.5
GAUSSIAN_MODELS = {"optimal": 1.0, "half": 0.5, "zero": 0.0}
"""The denoisers of the `gaussian` target: x_hat = scale * E[x | z_t], by name."""


def negative_elbo_one_step(key, x, x_hat_fn, schedule, num_steps: int, nll_fn):
  r"""recon + prior + N KL(q(z_s|z_t,x) || p(z_s|z_t)) at one uniform step per example, `[B]`.

  The estimator of `VDM.loss_terms(num_steps=N)` with independent (not antithetic) steps:
  the same mean as the other forms for one denoiser call instead of N.
  """

  batch = x.shape[0]
  key_0, key_i, key_t = jax.random.split(key, 3)
  gammas = schedule(jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps)
  z_0 = gaussian.q_sample(x, gammas[0], jax.random.normal(key_0, x.shape))
  recon = nll_fn(x, z_0, jnp.full((batch,), gammas[0]))
  prior = elbo.prior_loss(x, gammas[-1])
  i = jax.random.randint(key_i, (batch,), 1, num_steps + 1)
  g_s, g_t = gammas[i - 1], gammas[i]
  z_t = gaussian.q_sample(x, g_t, jax.random.normal(key_t, x.shape))
  kl = elbo.denoising_matching_kl(x, x_hat_fn(z_t, g_t), z_t, g_s, g_t)
  return recon + prior + num_steps * kl


def _forms(literal: bool, one_step: bool) -> dict:

  forms = {
    "consistency": hvae.negative_elbo_consistency,
    "denoising": hvae.negative_elbo_denoising,
    "sampled": hvae.negative_elbo_sampled,
  }
  if one_step:
    forms["one-step"] = negative_elbo_one_step
  if literal:
    forms["literal"] = lambda *a: hvae.negative_elbo_consistency(*a, bridge=False)
  return forms


def _shared_denoiser_forms(forms: dict):
  """One function computing `forms` on one trajectory with N denoiser calls in all.

  Every N-call form evaluates x_hat at the same points (z_{t_j}, gamma_j), j = 1..N, of
  the trajectory that `hvae.sample_trajectory` draws from the key; they are computed once
  and looked up by gamma. A lookup whose z_t is not the cached one (the forms drew a
  different trajectory) returns NaN, which `estimates` refuses, so the cache cannot
  silently change a result.
  """

  def fn(key, x, x_hat_fn, schedule, num_steps, nll_fn):
    gammas, z = hvae.sample_trajectory(key, x, schedule, num_steps)
    batch = x.shape[0]
    table = jax.vmap(lambda z_t, g: x_hat_fn(z_t, jnp.full((batch,), g)))(z[1:], gammas[1:])

    def cached(z_t, gamma_t):
      idx = jnp.argmin(jnp.abs(gammas[1:] - gamma_t[0]))
      hit = jnp.allclose(z_t, z[1:][idx], rtol=1e-5, atol=1e-5)
      return jnp.where(hit, table[idx], jnp.nan)

    return jnp.stack([f(key, x, cached, schedule, num_steps, nll_fn) for f in forms.values()])

  return fn


def estimates(
  key,
  x,
  x_hat_fn,
  schedule,
  num_steps: int,
  nll_fn,
  *,
  num_samples: int,
  chunk: int = 8,
  literal: bool = True,
  one_step: bool = True,
  share_denoiser: bool = True,
):
  """Every form on `num_samples` trajectories of every example, the same keys for all.

  Args:
    key: `jax.random` key.
    x: data `[B, ...]` (float).
    x_hat_fn, schedule, num_steps, nll_fn: as in `vdm_jax.hvae`.
    num_samples: S, trajectories per example.
    chunk: trajectories per example per jitted call (memory: chunk * N * B denoiser rows).
    literal, one_step: include these forms.
    share_denoiser: evaluate the denoiser once per trajectory point for all the N-call
      forms (`_shared_denoiser_forms`) instead of once per form; same values.

  Returns:
    (values, seconds): form -> float64 `[S, B]` nats; group of forms -> wall seconds
    (compilation included).
  """

  chunk = max(1, min(chunk, num_samples))
  num_chunks = ceil_div(num_samples, chunk)
  keys = jax.random.split(key, num_chunks * chunk).reshape(num_chunks, chunk)
  forms = _forms(literal, one_step)
  groups = {name: {name: form} for name, form in forms.items()}
  if share_denoiser:
    multi = {n: f for n, f in forms.items() if n != "one-step"}
    groups = {" + ".join(multi): multi} | (
      {"one-step": {"one-step": forms["one-step"]}} if one_step else {}
    )
  values, seconds = {}, {}
  for group, members in groups.items():
    if share_denoiser and group != "one-step":
      one = _shared_denoiser_forms(members)
    else:
      (f,) = members.values()
      one = lambda *a, f=f: jnp.stack([f(*a)])
    fn = jax.jit(
      jax.vmap(
        lambda key, x, one=one: one(key, x, x_hat_fn, schedule, num_steps, nll_fn), (0, None)
      )
    )
    start = time.perf_counter()
    out = np.concatenate([np.asarray(fn(keys[c], x), np.float64) for c in range(num_chunks)])
    seconds[group] = time.perf_counter() - start
    if not np.all(np.isfinite(out)):
      raise FloatingPointError(
        f"Non-finite estimates for {group} (with share_denoiser, a denoiser cache miss)."
      )
    for i, name in enumerate(members):
      values[name] = out[:num_samples, i]
  return {name: values[name] for name in forms}, seconds


def summarize_forms(values: dict, num_dims: int, reference: str = "denoising", z_max: float = 3.0):
  """Per-form mean, standard errors, per-example variance and agreement with `reference`.

  Args:
    values: form -> `[S, B]` nats (S trajectories of B examples; the same keys per form).
    num_dims: data dimensions per example (for bits/dim).
    reference: the form the others are compared with.
    z_max: a form agrees if |paired mean difference| < z_max Monte Carlo standard errors.

  Returns:
    dict form -> dict of floats (nats per example unless named bpd).
  """

  to_bpd = 1.0 / (num_dims * math.log(2.0))
  ref = values[reference]
  ref_var = ref.var(axis=0, ddof=1)
  out = {}
  for name, v in values.items():
    num_samples, num_examples = v.shape
    means, var = v.mean(axis=0), v.var(axis=0, ddof=1)
    d = v - ref
    diff_se = math.sqrt(d.var(axis=0, ddof=1).sum() / num_samples) / num_examples
    diff = float(d.mean())
    row = {
      "mean": float(means.mean()),
      "se_examples": float(means.std(ddof=1) / math.sqrt(num_examples)),
      "se_mc": math.sqrt(var.sum() / num_samples) / num_examples,
      "avg_var": float(var.mean()),
      "median_var_ratio": float(np.median(var / np.maximum(ref_var, 1e-30))),
      "diff": diff,
      "diff_se": diff_se,
      "z": diff / diff_se if diff_se > 0 else 0.0,
      "biased_form": name not in UNBIASED,
    }
    row["var_ratio"] = row["avg_var"] / float(ref_var.mean())
    row["agrees"] = bool(name == reference or abs(diff) < z_max * diff_se)
    for field in ("mean", "se_examples", "se_mc"):
      row[field + "_bpd"] = row[field] * to_bpd
    out[name] = row
  return out


def measure(key, x, x_hat_fn, schedule, num_steps, nll_fn, *, num_samples, **kwargs):
  """`estimates` then `summarize_forms`: returns (summary, seconds per form)."""
  values, seconds = estimates(
    key, x, x_hat_fn, schedule, num_steps, nll_fn, num_samples=num_samples, **kwargs
  )
  num_dims = math.prod(x.shape[1:])
  return summarize_forms(values, num_dims), seconds


def gaussian_target(key, *, num_examples, dims, scale, gamma_min, gamma_max):
  """(x, x_hat_fn, schedule, nll_fn, exact -log p(x) per example) of the Gaussian toy."""

  toy = testing.GaussianData(GAUSSIAN_MEAN, GAUSSIAN_STD)
  x = GAUSSIAN_MEAN + GAUSSIAN_STD * jax.random.normal(key, (num_examples, dims))
  if scale == 0.0:
    x_hat_fn = lambda z, g: jnp.zeros_like(z)
  else:
    x_hat_fn = lambda z, g: scale * toy.x_hat(z, g)
  schedule = schedules.LinearSchedule(gamma_min, gamma_max)
  nll = np.asarray(-toy.log_prob(x), np.float64)
  return x, x_hat_fn, schedule, testing.gaussian_decoder_nll, nll


def checkpoint_target(config, workdir, *, step, split, num_examples):
  """(x, x_hat_fn, schedule, nll_fn, info) of a trained VDM on a split's first examples.

  `config` None: the run's recorded config (`runs.load_run`).
  """

  run = runs.load_run(workdir, step=step, config=config)
  model, params, step, config = run.model, run.params, run.step, run.config
  k = data.first_examples(config.data, split, num_examples)["image"]
  vocab = model.vocab_size
  x = elbo.encode(jnp.asarray(k), vocab)

  def nll_fn(x, z_0, gamma_0):
    k = jnp.round(0.5 * vocab * (x + 1.0) - 0.5).astype(jnp.int32)  # inverse of encode
    return elbo.reconstruction_loss(k, z_0, gamma_0, vocab_size=vocab)

  gamma = np.asarray(model.gamma(params, jnp.array([0.0, 1.0])))
  info = {
    "checkpoint_step": int(step),
    "gamma_0": float(gamma[0]),
    "gamma_1": float(gamma[1]),
    "data": config.data.name,
    "split": split,
    "vocab_size": int(vocab),
  }
  return (
    x,
    lambda z, g: model.x_hat(params, z, g),
    lambda t: model.gamma(params, t),
    nll_fn,
    info,
  )


def forms_table(summary: dict, seconds: dict | None = None) -> str:
  """`summarize_forms`'s summary as aligned text, one row per form (and the wall time of each group)."""
  head = (
    f"{'form':<12} {'-ELBO nats':>11} {'+-SE(ex)':>9} {'+-SE(MC)':>9} {'bits/dim':>9}"
    f" {'avg var':>10} {'var/den':>9} {'med ratio':>9} {'diff vs den':>12} {'+-SE':>8}"
    f" {'z':>8}  agrees"
  )
  lines = [head]
  for name, r in summary.items():
    verdict = "(ref)" if name == "denoising" else ("yes" if r["agrees"] else "NO")
    if r["biased_form"]:
      verdict += " biased"
    lines.append(
      f"{name:<12} {r['mean']:11.4f} {r['se_examples']:9.4f} {r['se_mc']:9.4f}"
      f" {r['mean_bpd']:9.5f} {r['avg_var']:10.4g} {r['var_ratio']:9.4g}"
      f" {r['median_var_ratio']:9.4g} {r['diff']:12.4f} {r['diff_se']:8.4f} {r['z']:8.2f}"
      f"  {verdict}"
    )
  for group, sec in (seconds or {}).items():
    lines.append(f"time {sec:6.1f} s (compilation included): {group}")
  return "\n".join(lines)


def agreement_line(summary: dict) -> str:
  """One line saying whether the unbiased forms' means agree with the denoising form's
  (within 3 paired Monte Carlo standard errors), and how far the biased ones are off."""
  unbiased = [n for n, r in summary.items() if not r["biased_form"] and n != "denoising"]
  bad = [n for n in unbiased if not summary[n]["agrees"]]
  line = (
    "means agree: " + ", ".join(unbiased) + " within 3 paired MC standard errors of denoising"
    if not bad
    else "MEANS DISAGREE (> 3 paired MC standard errors from denoising): " + ", ".join(bad)
  )
  for n, r in summary.items():
    if r["biased_form"]:
      line += f"; {n} (biased) is off by {r['diff']:+.3f} nats = {r['z']:+.1f} SE"
  return line


def compare_forms(
  target: str = "gaussian",
  *,
  config=None,
  workdir: str | None = None,
  step: int | None = None,
  split: str = "test",
  num_steps: int = 16,
  num_samples: int = 64,
  num_examples: int = 64,
  chunk: int = 8,
  literal: bool = True,
  one_step: bool = True,
  share_denoiser: bool = True,
  gamma_min: float = -6.0,
  gamma_max: float = 6.0,
  dims: int = 64,
  gaussian_models=("optimal", "half", "zero"),
  seed: int = 0,
  command: str = "",
) -> dict:
  """Measures every form on `target` ("gaussian" or "checkpoint"); prints and writes nothing.

  Returns:
    The settings, and "runs": one entry per Gaussian denoiser (by name, with its
    "exact_nll") or "checkpoint", each {"forms": `summarize_forms`'s dict, "seconds": wall
    seconds per group of forms}; "wall_time_s". `render` turns it into the tables,
    `write_result` into JSON.
  """

  if target not in ("gaussian", "checkpoint"):
    raise ValueError(f"Unknown target {target!r}; choose 'gaussian' or 'checkpoint'.")
  unknown = set(gaussian_models) - set(GAUSSIAN_MODELS)
  if target == "gaussian" and unknown:
    raise ValueError(f"Unknown gaussian_models {sorted(unknown)}; {list(GAUSSIAN_MODELS)}.")
  if target == "checkpoint" and workdir is None:
    raise ValueError("target='checkpoint' needs the training run's --workdir.")
  key_x, key_e = jax.random.split(jax.random.key(seed))
  kwargs = dict(
    num_samples=num_samples,
    chunk=chunk,
    literal=literal,
    one_step=one_step,
    share_denoiser=share_denoiser,
  )
  start = time.perf_counter()
  result = {
    "target": target,
    "num_steps": num_steps,
    "num_samples": num_samples,
    "seed": seed,
    "command": command,
    "runs": {},
  }
  if target == "gaussian":
    result |= {
      "num_examples": num_examples,
      "dims": dims,
      "data": f"N({GAUSSIAN_MEAN}, {GAUSSIAN_STD}^2) per dimension",
      "gamma_min": gamma_min,
      "gamma_max": gamma_max,
    }
    for name in gaussian_models:
      x, x_hat_fn, schedule, nll_fn, nll = gaussian_target(
        key_x,
        num_examples=num_examples,
        dims=dims,
        scale=GAUSSIAN_MODELS[name],
        gamma_min=gamma_min,
        gamma_max=gamma_max,
      )
      summary, seconds = measure(key_e, x, x_hat_fn, schedule, num_steps, nll_fn, **kwargs)
      result["runs"][name] = {
        "forms": summary,
        "seconds": seconds,
        "exact_nll": float(nll.mean()),
        "scale": GAUSSIAN_MODELS[name],
      }
  else:
    x, x_hat_fn, schedule, nll_fn, info = checkpoint_target(
      config, workdir, step=step, split=split, num_examples=num_examples
    )
    result |= info | {"workdir": storage.resolve(workdir), "num_examples": len(x)}
    summary, seconds = measure(key_e, x, x_hat_fn, schedule, num_steps, nll_fn, **kwargs)
    result["runs"]["checkpoint"] = {"forms": summary, "seconds": seconds}
  result["wall_time_s"] = time.perf_counter() - start
  return result


COLUMNS = (
  "columns: -ELBO per example averaged over examples; SE(ex) its standard error over "
  "examples, SE(MC) the Monte Carlo one given the examples; avg var = mean over examples of "
  "the per-example variance of one estimate; var/den = its ratio to denoising's, med ratio "
  "the median of per-example ratios; diff vs den = paired mean difference (same keys) with "
  "its MC SE and z-score; agrees = |z| < 3"
)
"""The legend `render` ends with."""


def render(result: dict) -> str:
  """`compare_forms`'s result as text: a heading, one table per run, the agreement line of
  each, the column legend and the wall time."""
  n, s = result["num_steps"], result["num_samples"]
  if result["target"] == "gaussian":
    lines = [
      f"Gaussian toy x ~ N({GAUSSIAN_MEAN}, {GAUSSIAN_STD}^2), {result['dims']} dims, "
      f"{result['num_examples']} examples x {s} trajectories, N={n} steps, "
      f"gamma linear in [{result['gamma_min']}, {result['gamma_max']}]"
    ]
  else:
    lines = [
      f"{result['data']} checkpoint step {result['checkpoint_step']} ({result['workdir']}), "
      f"first {result['num_examples']} {result['split']} examples x {s} trajectories, "
      f"N={n} steps, gamma(0)={result['gamma_0']:.3f}, gamma(1)={result['gamma_1']:.3f}"
    ]
  for name, run in result["runs"].items():
    if "exact_nll" in run:
      lines += [
        "",
        f"[{name} denoiser: x_hat = {run['scale']} E[x|z_t]]"
        f"  exact -log p(x) = {run['exact_nll']:.4f} nats/example",
      ]
    lines += [forms_table(run["forms"], run["seconds"]), agreement_line(run["forms"])]
  lines += ["", COLUMNS, f"wall time {result['wall_time_s']:.1f} s"]
  return "\n".join(lines)


def write_result(result: dict, output: str) -> str:
  """Writes `result` as strict JSON at `output` (a local path or `gs://` object, written
  atomically, its folder made); returns `output`."""
  if not output:
    raise ValueError("write_result needs an output path (e.g. runs/elbo_forms.json).")
  storage.makedirs(storage.dirname(storage.resolve(output)))
  storage.write_atomic(output, workdir_lib.dumps_strict(result, indent=2))
  return output


def report(target: str = "gaussian", *, output: str | None = None, **kwargs) -> dict:
  """Deprecated: `print(render(compare_forms(...)))`, and `write_result` when `output` is
  given (nothing is written otherwise: there is no default path any more)."""
  warnings.warn(
    "elbo_forms.report is deprecated: use render(compare_forms(...)) and write_result.",
    DeprecationWarning,
    stacklevel=2,
  )
  result = compare_forms(target, **kwargs)
  print(render(result))
  if output:
    print(f"wrote {write_result(result, output)}")
  return result


def summarize(*args, **kwargs) -> dict:
  """Deprecated name of `summarize_forms` (`bpd.summarize` is another function)."""
  warnings.warn(
    "elbo_forms.summarize is renamed summarize_forms.", DeprecationWarning, stacklevel=2
  )
  return summarize_forms(*args, **kwargs)


def format_table(summary: dict, seconds: dict | None = None) -> str:
  """Deprecated name of `forms_table` (`report.format_table` is another function)."""
  warnings.warn("elbo_forms.format_table is renamed forms_table.", DeprecationWarning, stacklevel=2)
  return forms_table(summary, seconds)
