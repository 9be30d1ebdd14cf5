r"""How far each sampler's output is from the data, measured where the data is known exactly.

The Gaussian-mixture oracle (`vdm_jax.testing.OracleVDM` over the 2-D toy mixture) has a
Bayes-optimal denoiser, so a sampler's error is the error of its discretisation alone, not
of a network. For each sampler and step count, `measure` draws `num_samples` samples and
compares them with as many exact draws of the mixture, both on the same grid of V bins
(exact draws are quantised with `toy2d.quantise`; samplers decode with p(k | z_0)):

* the energy distance $2E|X - Y| - E|X - X'| - E|Y - Y'|$ (Euclidean, U-statistics, so
  an exact sampler has expectation 0), and its noise floor: mean and standard deviation of
  the same estimate between pairs of independent exact sets of the same size;
* the mean exact log density log p(x) of the samples' bin centres (and of exact draws).
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import sampling, schedules, testing
from vdm_jax.data import toy2d

__all__ = ["energy_distance", "measure", "render", "save_plot", "time_digits_sampling"]


@functools.partial(jax.jit, static_argnums=2)
def _pair_sum(a: jax.Array, b: jax.Array, chunk: int) -> jax.Array:
  """sum_ij |a_i - b_j| over all pairs, for a `[N, D]` (N a multiple of chunk), b `[M, D]`."""

  def block(rows):
    d2 = jnp.sum(jnp.square(rows[:, None, :] - b[None, :, :]), axis=-1)
    return jnp.sum(jnp.sqrt(d2))

  return jnp.sum(jax.lax.map(block, a.reshape(-1, chunk, a.shape[-1])))


def energy_distance(x, y) -> float:
  r"""Unbiased energy distance between samples x `[N, D]` and y `[M, D]`.

  $2 \bar d(x, y) - \bar d(x, x) - \bar d(y, y)$ with the within-sample means over the
  N(N - 1) pairs i != j. Zero in expectation when x and y come from one distribution.

  Example (unit Gaussians in 1-D shifted by 1: X - Y ~ N(1, 2), so the limit is
  2 E|N(1, 2)| - 2 E|N(0, 2)| = 2 (2 e^{-1/4} / sqrt(pi) + 1 - 2 Phi(-1/sqrt 2)) - 4 / sqrt(pi)
  = 0.542):
    >>> rng = np.random.default_rng(1)
    >>> x, y = rng.standard_normal((4000, 1)), rng.standard_normal((4000, 1)) + 1.0
    >>> round(energy_distance(x, y), 2)
    0.54
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
    raise ValueError(f"Need samples [N, D] and [M, D] with N, M >= 2; got {x.shape}, {y.shape}.")
  return 2.0 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)


def _mean_distance(a: np.ndarray, b: np.ndarray, chunk: int = 500) -> float:
  """Mean |a_i - b_j| over pairs (over i != j when `a is b`)."""
  n, m = len(a), len(b)
  pairs = n * (n - 1) if a is b else n * m
  return float(_pair_sum(a, b, math.gcd(chunk, n))) / pairs


def _centres(k: np.ndarray, vocab_size: int) -> np.ndarray:
  return (2.0 * np.asarray(k, np.float64) + 1.0) / vocab_size - 1.0


def _exact(num_samples: int, seed: int) -> np.ndarray:
  """Exact draws of the mixture, quantised to bin centres `[N, 2]`."""
  return _centres(toy2d.quantise(toy2d.sample(num_samples, seed)), toy2d.VOCAB_SIZE)


def measure(
  *,
  methods=("ancestral", "ddim", "dpm_solver"),
  steps=(5, 10, 20, 50, 100, 1000),
  num_samples: int = 4000,
  floor_pairs: int = 5,
  seed: int = 0,
  schedule=None,
) -> dict:
  """Energy distance to exact draws and mean exact log density, per sampler and step count.

  Returns a dict: "rows" (one per method and step count: "method", "num_steps",
  "energy", "log_density", "seconds"), "floor" ("energy_mean", "energy_std" over
  `floor_pairs` exact-vs-exact pairs; "log_density" of exact draws and its standard
  error) and the settings.
  """
  schedule = schedule or schedules.LinearSchedule()
  mixture = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
  oracle = testing.OracleVDM(schedule, mixture, data_shape=toy2d.SHAPE)
  log_density = lambda x: np.asarray(mixture.log_prob(jnp.asarray(x, jnp.float32)), np.float64)

  reference = _exact(num_samples, seed)
  floor = [
    energy_distance(_exact(num_samples, seed + 1 + 2 * i), _exact(num_samples, seed + 2 + 2 * i))
    for i in range(floor_pairs)
  ]
  ref_logp = log_density(reference)
  ref_self = _mean_distance(reference, reference)
  rows = []
  for method in methods:
    for n in steps:
      draw = jax.jit(
        lambda key, n=n, method=method: sampling.sample(
          oracle, None, key, num_samples, num_steps=n, method=method
        )
      )
      start = time.perf_counter()
      k = np.asarray(draw(jax.random.key(seed)))
      x = _centres(k, toy2d.VOCAB_SIZE)
      rows.append(
        {
          "method": method,
          "num_steps": n,
          "energy": 2.0 * _mean_distance(x, reference) - _mean_distance(x, x) - ref_self,
          "log_density": float(log_density(x).mean()),
          "seconds": time.perf_counter() - start,
        }
      )
  return {
    "rows": rows,
    "floor": {
      "energy_mean": float(np.mean(floor)),
      "energy_std": float(np.std(floor, ddof=1)) if floor_pairs > 1 else math.nan,
      "log_density": float(ref_logp.mean()),
      "log_density_se": float(ref_logp.std(ddof=1) / math.sqrt(ref_logp.size)),
    },
    "num_samples": num_samples,
    "floor_pairs": floor_pairs,
    "schedule": repr(schedule),
    "seed": seed,
  }


def render(result: dict) -> str:
  """A Markdown table of `measure`'s result: energy distance and log density by steps (and
  the timings of `time_digits_sampling`, when the result holds them as "digits_timing")."""
  steps = sorted({r["num_steps"] for r in result["rows"]})
  methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
  by = {(r["method"], r["num_steps"]): r for r in result["rows"]}
  floor = result["floor"]

  def table(title: str, cell) -> list[str]:
    head = "| sampler | " + " | ".join(f"T={n}" for n in steps) + " |"
    rows = [f"| {m} | " + " | ".join(cell(by[m, n]) for n in steps) + " |" for m in methods]
    return [title, "", head, "|---" * (len(steps) + 1) + "|", *rows]

  lines = table(
    f"Energy distance to {result['num_samples']} exact draws (x 1e-3; exact vs exact: "
    f"{1e3 * floor['energy_mean']:.3f} +- {1e3 * floor['energy_std']:.3f} over "
    f"{result['floor_pairs']} pairs)",
    lambda r: f"{1e3 * r['energy']:.3f}",
  )
  lines += [""] + table(
    f"Mean exact log density of the samples (exact draws: {floor['log_density']:.3f} +- "
    f"{floor['log_density_se']:.3f})",
    lambda r: f"{r['log_density']:.3f}",
  )
  for row in result.get("digits_timing", []):
    lines.append(
      f"digits, 64 samples, {row['method']} T={row['num_steps']}: {row['seconds']:.2f} s "
      f"(first call, compile included: {row['first_call_seconds']:.2f} s)"
    )
  return "\n".join(lines)


def save_plot(result: dict, path: str) -> None:
  """Energy distance and mean exact log density against steps, each with the exact-vs-exact
  band (mean +- 2 sd; log density: exact draws' mean +- 2 se), as a PNG. The distance axis
  is linear within the band and logarithmic above it (the estimates may be negative)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  floor = result["floor"]
  methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
  fig, (ax_e, ax_l) = plt.subplots(1, 2, figsize=(10, 3.8))
  for m in methods:
    rows = [r for r in result["rows"] if r["method"] == m]
    steps = [r["num_steps"] for r in rows]
    ax_e.plot(steps, [r["energy"] for r in rows], "o-", label=m)
    ax_l.plot(steps, [r["log_density"] for r in rows], "o-", label=m)
  mean, sd = floor["energy_mean"], floor["energy_std"]
  ax_e.axhspan(mean - 2 * sd, mean + 2 * sd, color="grey", alpha=0.3, label="exact vs exact")
  ax_e.set_yscale("symlog", linthresh=max(4 * sd, 1e-6))
  ax_e.set(xscale="log", xlabel="steps (network calls)", ylabel="energy distance")
  mean, se = floor["log_density"], floor["log_density_se"]
  ax_l.axhspan(mean - 2 * se, mean + 2 * se, color="grey", alpha=0.3, label="exact draws")
  ax_l.set(xscale="log", xlabel="steps (network calls)", ylabel="mean exact log density")
  ax_l.set_ylim(bottom=mean - 1.0)  # T = 5 lies far below; the table has it
  for ax in (ax_e, ax_l):
    ax.legend(fontsize=8)
  fig.suptitle(f"Samplers on the 2-D mixture oracle, {result['num_samples']} samples each")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def time_digits_sampling(config, runs=(("dpm_solver", 20), ("ancestral", 1000)), num_samples=64):
  """Seconds to draw `num_samples` samples of a freshly initialised model of `config` (the
  network's cost does not depend on its weights), per (method, steps): compile and run."""
  from vdm_jax import data, models

  model = models.make_model(config, data.dataset_info(config.data))
  params = model.init(jax.random.key(0))
  out = []
  for method, n in runs:
    fn = jax.jit(
      lambda p, key, n=n, m=method: model.sample(p, key, num_samples, num_steps=n, method=m)
    )
    start = time.perf_counter()
    fn(params, jax.random.key(1)).block_until_ready()
    compiled = time.perf_counter() - start
    start = time.perf_counter()
    fn(params, jax.random.key(2)).block_until_ready()
    out.append(
      {
        "method": method,
        "num_steps": n,
        "seconds": time.perf_counter() - start,
        "first_call_seconds": compiled,
      }
    )
  return out
