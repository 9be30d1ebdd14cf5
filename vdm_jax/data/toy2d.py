r"""A 2-D Gaussian mixture quantised to 256 levels per coordinate, with its exact likelihood.

The distribution: 8 equally weighted isotropic Gaussians with standard deviation
`MIXTURE_STD` = 0.06 and means `MIXTURE_MEANS` evenly spaced on a circle of radius 0.7,

$p(x) = \frac{1}{8} \sum_{j=1}^{8} N(x; \mu_j, \sigma^2 I_2)$.

A draw x is quantised per coordinate to k = floor((x + 1) V / 2), clipped to {0, ..., V-1}
with V = 256, so that k's bin centre is (2k + 1)/V - 1 (docs/derivation.md, "Notation") and
bin k is the interval [2k/V - 1, 2(k+1)/V - 1); the two edge bins also take the tails beyond +-1.
The probability of a bin is therefore known exactly (`log_prob_quantised`), which lets a
trained model's bits/dim be compared with the true value:

  >>> k = toy2d.load("test")                                   # [5000, 2] int32
  >>> exact_bpd = -toy2d.log_prob_quantised(k).mean() / (2 * np.log(2))

The splits are fixed: `NUM_EXAMPLES` draws from fixed NumPy seeds (different for train
and test), generated in memory on first use (a few milliseconds) and cached.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.special  # a dependency of scikit-learn, so always installed with vdm_jax

__all__ = [
  "MIXTURE_MEANS",
  "MIXTURE_STD",
  "NUM_COMPONENTS",
  "NUM_EXAMPLES",
  "SHAPE",
  "VOCAB_SIZE",
  "load",
  "log_prob_quantised",
  "quantise",
  "sample",
]

NUM_COMPONENTS = 8
"""Components of the mixture, evenly spaced on a circle."""
RADIUS = 0.7
MIXTURE_STD = 0.06
"""The standard deviation of every component, per coordinate."""
_ANGLES = 2.0 * np.pi * np.arange(NUM_COMPONENTS) / NUM_COMPONENTS
MIXTURE_MEANS = np.stack([RADIUS * np.cos(_ANGLES), RADIUS * np.sin(_ANGLES)], axis=-1)  # [8, 2]
"""The components' means `[NUM_COMPONENTS, 2]` (read-only)."""
MIXTURE_MEANS.setflags(write=False)

VOCAB_SIZE = 256
"""Quantisation levels per coordinate."""
SHAPE = (2,)
"""The shape of one example."""
NUM_EXAMPLES = {"train": 20_000, "test": 5_000}
"""Examples per split."""
_SEEDS = {"train": 20_240_601, "test": 20_240_602}


def sample(num_examples: int, seed: int) -> np.ndarray:
  """Continuous draws from the mixture.

  Args:
    num_examples: N.
    seed: seed of `np.random.default_rng`.

  Returns:
    float64 `[N, 2]`.
  """
  rng = np.random.default_rng(seed)
  component = rng.integers(NUM_COMPONENTS, size=num_examples)  # [N]
  return MIXTURE_MEANS[component] + MIXTURE_STD * rng.standard_normal((num_examples, 2))


def quantise(x) -> np.ndarray:
  """Real values -> integer bins k = floor((x + 1) V / 2), clipped to {0, ..., V-1}.

  Args:
    x: float array, any shape.

  Returns:
    int32 array with the shape of `x`.
  """
  k = np.floor((np.asarray(x, np.float64) + 1.0) * (VOCAB_SIZE / 2))
  return np.clip(k, 0, VOCAB_SIZE - 1).astype(np.int32)


@functools.cache
def _load(split: str) -> np.ndarray:
  k = quantise(sample(NUM_EXAMPLES[split], _SEEDS[split]))
  k.setflags(write=False)
  return k


def load(split: str) -> np.ndarray:
  """The fixed quantised split, generated once per process and cached.

  Args:
    split: "train" (20,000 examples) or "test" (5,000 examples).

  Returns:
    read-only int32 `[N, 2]` with values in {0, ..., 255}.
  """
  if split not in NUM_EXAMPLES:
    raise ValueError(f"Unknown toy2d split {split!r}; the splits are {tuple(NUM_EXAMPLES)}.")
  return _load(split)


def _log_normal_interval(a, b):
  """log(Phi(b) - Phi(a)) for a <= b (infinite ends allowed), accurate in both tails."""
  # Phi(b) - Phi(a) = Phi(-a) - Phi(-b): work on the side of 0 where the CDFs are small.
  flip = a > 0
  a, b = np.where(flip, -b, a), np.where(flip, -a, b)
  log_cdf_a, log_cdf_b = scipy.special.log_ndtr(a), scipy.special.log_ndtr(b)
  with np.errstate(divide="ignore"):  # -inf where the bin has no mass in float64
    return log_cdf_b + np.log(-np.expm1(log_cdf_a - log_cdf_b))


def log_prob_quantised(k) -> np.ndarray:
  r"""Exact log-probability of quantised points under the mixture, in nats, float64.

  $P(k) = \frac{1}{8} \sum_j \prod_{d=1}^{2} \left[\Phi\left(\frac{h_d - \mu_{jd}}{\sigma}\right)
  - \Phi\left(\frac{l_d - \mu_{jd}}{\sigma}\right)\right]$, with bin edges
  $l_d = 2k_d/V - 1$ (or $-\infty$ for $k_d = 0$) and $h_d = 2(k_d+1)/V - 1$ (or $+\infty$
  for $k_d = V-1$). Summed over all 256^2 bins it is 1.

  Args:
    k: integer array `[B, 2]` with values in {0, ..., 255}.

  Returns:
    float64 `[B]`, log P(k) in nats (bits/dim = -log P / (2 ln 2)).
  """
  k = np.asarray(k)
  if not np.issubdtype(k.dtype, np.integer):
    raise ValueError(f"`k` must be an integer array of bins, got dtype {k.dtype}.")
  if k.ndim != 2 or k.shape[1] != 2:
    raise ValueError(f"`k` must have shape [B, 2], got shape {k.shape}.")
  if k.size and (k.min() < 0 or k.max() >= VOCAB_SIZE):
    raise ValueError(
      f"`k` must lie in {{0, ..., {VOCAB_SIZE - 1}}}, got values in [{k.min()}, {k.max()}]."
    )
  k = k.astype(np.float64)
  low = np.where(k == 0, -np.inf, 2.0 * k / VOCAB_SIZE - 1.0)  # [B, 2]
  high = np.where(k == VOCAB_SIZE - 1, np.inf, 2.0 * (k + 1.0) / VOCAB_SIZE - 1.0)
  a = (low[:, None, :] - MIXTURE_MEANS[None]) / MIXTURE_STD  # [B, 8, 2]
  b = (high[:, None, :] - MIXTURE_MEANS[None]) / MIXTURE_STD
  log_per_component = _log_normal_interval(a, b).sum(axis=-1)  # [B, 8]
  return scipy.special.logsumexp(log_per_component, axis=-1) - np.log(NUM_COMPONENTS)
