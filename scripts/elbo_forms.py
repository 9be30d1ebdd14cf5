r"""The seed's ELBO forms side by side: same -ELBO, different Monte Carlo variance.

  python scripts/elbo_forms.py --target=gaussian
  python scripts/elbo_forms.py --target=checkpoint --config=configs/digits.py --workdir=runs/digits

For the N-step Markovian hierarchical VAE of `vdm_jax.hvae` (latents on t_j = j/N) the
negative ELBO has several unbiased estimators, all computed here from the SAME forward
trajectories (the same keys for every form, so their means compare by paired differences):

* consistency: the seed's first form, two random latents per step, with the analytic
  Gaussian bridge (`hvae.negative_elbo_consistency`);
* denoising: the seed's denoising-matching form (`hvae.negative_elbo_denoising`);
* sampled: log q(z|x) - log p(x, z) on the sampled trajectory (`hvae.negative_elbo_sampled`);
* one-step: what VDM trains and evaluates with, recon + prior + N KL_i at one uniformly
  drawn step i (one denoiser call instead of N; `--one_step`);
* literal (`--literal`): the seed's consistency form taken literally, KL(q(z_j|z_{j-1}) ||
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

import json
import math
import os
import shlex
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_TARGET = flags.DEFINE_enum("target", "gaussian", ["gaussian", "checkpoint"], "What to measure.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (checkpoint).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (checkpoint).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_SPLIT = flags.DEFINE_string("split", "test", "Split whose first examples are used (checkpoint).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 16, "N, the number of latent steps.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Trajectories per example.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 64, "Examples.")
_CHUNK = flags.DEFINE_integer("chunk", 8, "Trajectories per example per jitted call.")
_LITERAL = flags.DEFINE_bool("literal", True, "Also the seed's literal (biased) consistency form.")
_ONE_STEP = flags.DEFINE_bool("one_step", True, "Also VDM's one-random-step estimator.")
_SHARE = flags.DEFINE_bool(
  "share_denoiser", True, "One denoiser call per trajectory point for all N-call forms."
)
_GAMMA_MIN = flags.DEFINE_float("gamma_min", -6.0, "gamma(0) (gaussian).")
_GAMMA_MAX = flags.DEFINE_float("gamma_max", 6.0, "gamma(1) (gaussian).")
_DIMS = flags.DEFINE_integer("dims", 64, "Data dimensions (gaussian).")
_MODELS = flags.DEFINE_list(
  "gaussian_models", ["optimal", "half", "zero"], "Denoisers (gaussian): optimal, half, zero."
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON (default runs/elbo_forms_<target>.json).")

UNBIASED = ("consistency", "denoising", "sampled", "one-step")
GAUSSIAN_MEAN, GAUSSIAN_STD = 0.3, 0.5
GAUSSIAN_MODELS = {"optimal": 1.0, "half": 0.5, "zero": 0.0}  # x_hat = scale * E[x | z_t]


def negative_elbo_one_step(key, x, x_hat_fn, schedule, num_steps: int, nll_fn):
  r"""recon + prior + N KL(q(z_s|z_t,x) || p(z_s|z_t)) at one uniform step per example, `[B]`.

  The estimator of `VDM.loss_terms(num_steps=N)` with independent (not antithetic) steps:
  the same mean as the other forms for one denoiser call instead of N.
  """
  import jax
  import jax.numpy as jnp

  from vdm_jax import elbo, gaussian

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
  from vdm_jax import hvae

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
  import jax
  import jax.numpy as jnp

  from vdm_jax import hvae

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
  import jax
  import jax.numpy as jnp
  import numpy as np

  chunk = max(1, min(chunk, num_samples))
  num_chunks = -(-num_samples // chunk)
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
      jax.vmap(lambda k, xx, one=one: one(k, xx, x_hat_fn, schedule, num_steps, nll_fn), (0, None))
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


def summarize(values: dict, num_dims: int, reference: str = "denoising", z_max: float = 3.0):
  """Per-form mean, standard errors, per-example variance and agreement with `reference`.

  Args:
    values: form -> `[S, B]` nats (S trajectories of B examples; the same keys per form).
    num_dims: data dimensions per example (for bits/dim).
    reference: the form the others are compared with.
    z_max: a form agrees if |paired mean difference| < z_max Monte Carlo standard errors.

  Returns:
    dict form -> dict of floats (nats per example unless named bpd).
  """
  import numpy as np

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
    for k in ("mean", "se_examples", "se_mc"):
      row[k + "_bpd"] = row[k] * to_bpd
    out[name] = row
  return out


def measure(key, x, x_hat_fn, schedule, num_steps, nll_fn, *, num_samples, **kwargs):
  """`estimates` then `summarize`: returns (summary, seconds per form)."""
  values, seconds = estimates(
    key, x, x_hat_fn, schedule, num_steps, nll_fn, num_samples=num_samples, **kwargs
  )
  num_dims = math.prod(x.shape[1:])
  return summarize(values, num_dims), seconds


def gaussian_target(key, *, num_examples, dims, scale, gamma_min, gamma_max):
  """(x, x_hat_fn, schedule, nll_fn, exact -log p(x) per example) of the Gaussian toy."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from vdm_jax import schedules, testing

  data = testing.GaussianData(GAUSSIAN_MEAN, GAUSSIAN_STD)
  x = GAUSSIAN_MEAN + GAUSSIAN_STD * jax.random.normal(key, (num_examples, dims))
  if scale == 0.0:
    x_hat_fn = lambda z, g: jnp.zeros_like(z)
  else:
    x_hat_fn = lambda z, g: scale * data.x_hat(z, g)
  schedule = schedules.LinearSchedule(gamma_min, gamma_max)
  nll = np.asarray(-data.log_prob(x), np.float64)
  return x, x_hat_fn, schedule, testing.gaussian_decoder_nll, nll


def checkpoint_target(config, workdir, *, step, split, num_examples):
  """(x, x_hat_fn, schedule, nll_fn, info) of a trained VDM on a split's first examples."""
  import jax.numpy as jnp
  import numpy as np

  from vdm_jax import data, elbo, train

  vdm, _, params, step = train.load_ema_params(config, workdir, step=step)
  batches = data.eval_batches(config.data, split, global_batch_size=num_examples)
  try:
    batch = next(batches)
  finally:
    batches.close()
  k = np.asarray(batch["image"])[np.asarray(batch["mask"]) > 0]
  vocab = vdm.vocab_size
  x = elbo.encode(jnp.asarray(k), vocab)

  def nll_fn(x, z_0, gamma_0):
    k = jnp.round(0.5 * vocab * (x + 1.0) - 0.5).astype(jnp.int32)  # inverse of encode
    return elbo.reconstruction_loss(k, z_0, gamma_0, vocab_size=vocab)

  gamma = np.asarray(vdm.gamma(params, jnp.array([0.0, 1.0])))
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
    lambda z, g: vdm.x_hat(params, z, g),
    lambda t: vdm.gamma(params, t),
    nll_fn,
    info,
  )


def format_table(summary: dict, seconds: dict | None = None) -> str:
  """The summary as aligned text, one row per form (and the wall time of each group)."""
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vdm_jax._cli import quiet_logging

  quiet_logging()
  import jax

  target = _TARGET.value
  key_x, key_e = jax.random.split(jax.random.key(_SEED.value))
  kwargs = dict(
    num_samples=_NUM_SAMPLES.value,
    chunk=_CHUNK.value,
    literal=_LITERAL.value,
    one_step=_ONE_STEP.value,
    share_denoiser=_SHARE.value,
  )
  n = _NUM_STEPS.value
  start = time.perf_counter()
  result = {
    "target": target,
    "num_steps": n,
    "num_samples": _NUM_SAMPLES.value,
    "seed": _SEED.value,
    "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
    "runs": {},
  }
  if target == "gaussian":
    unknown = set(_MODELS.value) - set(GAUSSIAN_MODELS)
    if unknown:
      raise app.UsageError(f"Unknown --gaussian_models {sorted(unknown)}; {list(GAUSSIAN_MODELS)}.")
    result |= {
      "num_examples": _NUM_EXAMPLES.value,
      "dims": _DIMS.value,
      "data": f"N({GAUSSIAN_MEAN}, {GAUSSIAN_STD}^2) per dimension",
      "gamma_min": _GAMMA_MIN.value,
      "gamma_max": _GAMMA_MAX.value,
    }
    print(
      f"Gaussian toy x ~ N({GAUSSIAN_MEAN}, {GAUSSIAN_STD}^2), {_DIMS.value} dims, "
      f"{_NUM_EXAMPLES.value} examples x {_NUM_SAMPLES.value} trajectories, N={n} steps, "
      f"gamma linear in [{_GAMMA_MIN.value}, {_GAMMA_MAX.value}]"
    )
    for model in _MODELS.value:
      x, x_hat_fn, schedule, nll_fn, nll = gaussian_target(
        key_x,
        num_examples=_NUM_EXAMPLES.value,
        dims=_DIMS.value,
        scale=GAUSSIAN_MODELS[model],
        gamma_min=_GAMMA_MIN.value,
        gamma_max=_GAMMA_MAX.value,
      )
      summary, seconds = measure(key_e, x, x_hat_fn, schedule, n, nll_fn, **kwargs)
      exact = float(nll.mean())
      result["runs"][model] = {"forms": summary, "seconds": seconds, "exact_nll": exact}
      print(
        f"\n[{model} denoiser: x_hat = {GAUSSIAN_MODELS[model]} E[x|z_t]]"
        f"  exact -log p(x) = {exact:.4f} nats/example"
      )
      print(format_table(summary, seconds))
      print(agreement_line(summary))
  else:
    if _CONFIG.value is None or _WORKDIR.value is None:
      raise app.UsageError("--target=checkpoint needs --config and --workdir.")
    x, x_hat_fn, schedule, nll_fn, info = checkpoint_target(
      _CONFIG.value,
      _WORKDIR.value,
      step=_STEP.value,
      split=_SPLIT.value,
      num_examples=_NUM_EXAMPLES.value,
    )
    result |= info | {"workdir": os.path.abspath(_WORKDIR.value), "num_examples": len(x)}
    print(
      f"{info['data']} checkpoint step {info['checkpoint_step']} ({_WORKDIR.value}), "
      f"first {len(x)} {info['split']} examples x {_NUM_SAMPLES.value} trajectories, N={n} "
      f"steps, gamma(0)={info['gamma_0']:.3f}, gamma(1)={info['gamma_1']:.3f}"
    )
    summary, seconds = measure(key_e, x, x_hat_fn, schedule, n, nll_fn, **kwargs)
    result["runs"]["checkpoint"] = {"forms": summary, "seconds": seconds}
    print(format_table(summary, seconds))
    print(agreement_line(summary))
  result["wall_time_s"] = time.perf_counter() - start
  print(
    "\ncolumns: -ELBO per example averaged over examples; SE(ex) its standard error over "
    "examples, SE(MC) the Monte Carlo one given the examples; avg var = mean over examples of "
    "the per-example variance of one estimate; var/den = its ratio to denoising's, med ratio "
    "the median of per-example ratios; diff vs den = paired mean difference (same keys) with "
    "its MC SE and z-score; agrees = |z| < 3"
  )
  output = _OUTPUT.value or os.path.join("runs", f"elbo_forms_{target}.json")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wall time {result['wall_time_s']:.1f} s; wrote {output}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
