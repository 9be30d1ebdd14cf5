r"""Certify that the framework's loss is a correct ELBO, with no training involved.

For continuous data whose Bayes-optimal denoiser E[x | z_t] and density p(x) are closed
form (`testing.GaussianMixture`, `testing.GaussianData`), the ELBO computed by the
library's own pure functions with that denoiser must

* lie above -log p(x) (on average over x),
* decrease as the number of steps T doubles (Kingma et al. 2021, Appendix), and
* in continuous time, equal -log p(x) up to the prior and reconstruction mismatches at
  the ends of the schedule, which vanish as gamma_min -> -inf and gamma_max -> +inf.

The reconstruction term uses the Gaussian decoder N(x; z_0/alpha_0, sigma_0^2/alpha_0^2),
the continuous-data counterpart of the discrete decoder.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import elbo, gaussian, predictions, schedules, testing, times

__all__ = ["certify", "certify_toy2d", "render", "save_plot"]


def _terms(key, data, schedule, x, num_samples: int, num_steps: int):
  """Per-example (recon, prior, diffusion) in nats, each `[N]`, averaged over samples."""
  n = x.shape[0]
  # `[N]`, or `[N, D]` for a per-dimension schedule (t `[N]` -> gamma `[N, D]`).
  g0, g1 = schedule(jnp.zeros((n,))), schedule(jnp.ones((n,)))
  key_r, key_d = jax.random.split(key)

  def recon_one(key):
    return testing.gaussian_decoder_nll(
      x, gaussian.q_sample(x, g0, jax.random.normal(key, x.shape)), g0
    )

  recon = jax.lax.map(recon_one, jax.random.split(key_r, num_samples)).mean(0)
  prior = elbo.prior_loss(x, g1)

  def eps_hat(z, gamma):
    return predictions.eps_from_x(z, data.x_hat(z, gamma), gamma)

  if num_steps == 0:

    def diff_one(key):
      key_t, key_e = jax.random.split(key)
      t = times.sample_times(key_t, n)
      gamma, dgamma = schedules.gamma_and_derivative(schedule, t)
      eps = jax.random.normal(key_e, x.shape)
      z = gaussian.q_sample(x, gamma, eps)
      return elbo.diffusion_loss_continuous(eps, eps_hat(z, gamma), dgamma)

    diffusion = jax.lax.map(diff_one, jax.random.split(key_d, num_samples)).mean(0)
  else:
    # Every one of the T steps (no sampling of t), noise averaged over `num_samples` draws.
    def step(i):
      t = (i + 1.0) / num_steps
      t = jnp.full((n,), t)
      g_t, g_s = schedule(t), schedule(t - 1.0 / num_steps)

      def one(key):
        eps = jax.random.normal(key, x.shape)
        z = gaussian.q_sample(x, g_t, eps)
        return (
          elbo.diffusion_loss_discrete(eps, eps_hat(z, g_t), g_s, g_t, num_steps=num_steps)
          / num_steps
        )

      keys = jax.random.split(jax.random.fold_in(key_d, i), num_samples)
      return jax.lax.map(one, keys).mean(0)

    diffusion = jax.lax.map(step, jnp.arange(num_steps, dtype=jnp.float32)).sum(0)
  return recon, prior, diffusion


def certify(
  key,
  data,
  x,
  schedule: schedules.Schedule,
  *,
  steps=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
  num_samples: int = 16,
  continuous_samples: int = 512,
) -> list[dict]:
  """ELBO of the Bayes-optimal model against the exact NLL, for each T and in continuous time.

  Args:
    key: `jax.random` key.
    data: a `testing.GaussianMixture` or `testing.GaussianData`.
    x: continuous data `[N, D]`, typically drawn from `data`.
    schedule: callable t -> gamma, elementwise, or t `[N]` -> `[N, D]` for a
      per-dimension schedule (e.g. `testing.PerDimensionSchedule`); the certificate holds
      for both (each dimension's diffusion term integrates its own gamma_d).
    steps: the discrete T to evaluate (continuous time, T = 0, is always added last).
    num_samples: Monte Carlo draws of the noise per example and per step (discrete T).
    continuous_samples: draws of (t, noise) per example in continuous time.

  Returns:
    One dict per T (T = 0 last) with "T", "nll", "elbo", "gap" (= elbo - nll, nats per
    example, mean over x), "gap_se" (its standard error over x), "recon", "prior",
    "diffusion" (nats, means).
  """
  x = jnp.asarray(x, jnp.float32)
  nll = -np.asarray(data.log_prob(x), np.float64)
  rows = []
  for num_steps in (*steps, 0):
    draws = continuous_samples if num_steps == 0 else num_samples
    fn = jax.jit(lambda key, n=num_steps, m=draws: _terms(key, data, schedule, x, m, n))
    recon, prior, diffusion = (
      np.asarray(v, np.float64) for v in fn(jax.random.fold_in(key, num_steps))
    )
    total = recon + prior + diffusion
    gap = total - nll
    rows.append(
      {
        "T": num_steps,
        "nll": float(nll.mean()),
        "elbo": float(total.mean()),
        "gap": float(gap.mean()),
        "gap_se": float(gap.std(ddof=1) / math.sqrt(gap.size)),
        "recon": float(recon.mean()),
        "prior": float(prior.mean()),
        "diffusion": float(diffusion.mean()),
      }
    )
  return rows


def certify_toy2d(
  *,
  schedule: str = "linear",
  gamma_min: float = -13.3,
  gamma_max: float = 13.3,
  num_examples: int = 512,
  num_samples: int = 16,
  max_log2_steps: int = 10,
  seed: int = 0,
) -> dict:
  """`certify` on `num_examples` points of the toy2d mixture (`data.toy2d`, continuous),
  T = 1, 2, 4, ..., 2^max_log2_steps and continuous time, with a linear or cosine schedule.

  Returns:
    {"schedule": its repr, "num_examples", "rows": `certify`'s rows}; `render` prints it,
    `save_plot` draws it.
  """
  from vdm_jax.data import toy2d

  kinds = {"linear": schedules.LinearSchedule, "cosine": schedules.CosineSchedule}
  if schedule not in kinds:
    raise ValueError(f"Unknown schedule {schedule!r}; choose from {sorted(kinds)}.")
  fn = kinds[schedule](gamma_min, gamma_max)
  data = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
  x = toy2d.sample(num_examples, seed)
  steps = tuple(2**i for i in range(max_log2_steps + 1))
  rows = certify(jax.random.key(seed), data, x, fn, steps=steps, num_samples=num_samples)
  return {"schedule": repr(fn), "num_examples": len(x), "rows": rows}


def render(result: dict) -> str:
  """`certify_toy2d`'s result as text: the exact -log p(x), then per T the ELBO and its gap
  with the gap's standard error (nats per example; "cont." is continuous time)."""
  rows = result["rows"]
  lines = [
    f"{result['schedule']}; {result['num_examples']} points of the toy2d mixture; "
    f"exact -log p(x) = {rows[0]['nll']:.4f}",
    f"{'T':>6} {'ELBO':>12} {'gap':>12} {'+-':>8}  (nats per example)",
  ]
  for r in rows:
    name = "cont." if r["T"] == 0 else str(r["T"])
    lines.append(f"{name:>6} {r['elbo']:12.4f} {r['gap']:12.4f} {r['gap_se']:8.4f}")
  return "\n".join(lines)


def save_plot(result: dict, path: str) -> None:
  """The gap against T (log-log, with +-1 standard error bars) as a PNG at `path`, and the
  continuous-time gap as a line at its 2-standard-error upper bound (a log axis cannot show
  a gap that is zero within its error). Needs matplotlib (the `plots` extra)."""
  from vdm_jax import _deps

  matplotlib = _deps.require("matplotlib", extra="plots", feature="certify.save_plot")
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = result["rows"]
  discrete = [r for r in rows if r["T"] > 0]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.errorbar(
    [r["T"] for r in discrete],
    [r["gap"] for r in discrete],
    yerr=[r["gap_se"] for r in discrete],
    marker="o",
  )
  cont = rows[-1]
  bound = abs(cont["gap"]) + 2 * cont["gap_se"]
  label = f"continuous time: gap {cont['gap']:.3f} +- {cont['gap_se']:.3f}, |gap| below this line"
  ax.axhline(bound, color="k", linestyle="--", label=label)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("T")
  ax.set_ylabel("ELBO - exact NLL (nats)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
