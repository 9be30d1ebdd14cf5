"""Diffusion times for the ELBO's Monte Carlo estimate: uniform, antithetic, importance.

`sample_times` draws one t per example in (0, 1] (on the grid i/T for T steps), with
antithetic (stratified) draws by default; `times_from_uniform` maps given uniforms onto
times, so evaluation can stratify over a whole split; the importance sampler draws t in
proportion to a running sqrt(E[L(t)^2]) per time bin and returns the weights 1/p(t) that
keep the diffusion term unbiased.
"""

from __future__ import annotations

from typing import TypedDict

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from vdm_jax import _checks

__all__ = [
  "TimeMoments",
  "importance_bin_probs",
  "importance_sample_times",
  "init_time_moments",
  "sample_times",
  "time_bin",
  "times_from_uniform",
  "update_time_moments",
]


class TimeMoments(TypedDict):
  """Running per-bin statistics of the diffusion loss for importance sampling of t."""

  second_moment: jax.Array  # [K] float32, E[L(t)^2] in each of the K time bins
  seen: jax.Array  # [K] bool, whether the bin has had a sample yet


def sample_times(
  key: jax.Array, batch_size: int, *, num_steps: int = 0, antithetic: bool = True
) -> jax.Array:
  r"""One diffusion time per example, t in (0, 1].

  With `antithetic=True` (low-discrepancy sampling, as in the VDM paper) a single
  uniform u_0 is drawn and u_b = (u_0 + b/B) mod 1, so the batch covers [0, 1)
  evenly; each u_b is still marginally uniform, so the loss stays unbiased while its
  variance across the batch drops. Continuous time returns t = 1 - u. With
  `num_steps = T > 0` the grid step i = floor(u T) + 1 in {1..T} is returned as
  t = i/T (its predecessor is s = t - 1/T).

  Args:
    key: a `jax.random` key.
    batch_size: B.
    num_steps: 0 for continuous time, else T.
    antithetic: stratify the batch as above; else i.i.d. uniforms.

  Returns:
    t, float32 `[B]`.

  Example: antithetic draws put one t in each quarter of (0, 1] for B = 4.
    >>> import jax
    >>> t = sample_times(jax.random.key(0), 4)
    >>> sorted((t * 4).astype(int).tolist())
    [0, 1, 2, 3]
    >>> sample_times(jax.random.key(0), 4, num_steps=10).tolist()  # grid times i/T
    [1.0, 0.2, 0.5, 0.7]
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=True)
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
  if antithetic:
    u0 = jax.random.uniform(key, ())
    u = jnp.mod(u0 + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  else:
    u = jax.random.uniform(key, (batch_size,))
  return times_from_uniform(u, num_steps=num_steps)


def times_from_uniform(u: ArrayLike, *, num_steps: int = 0) -> jax.Array:
  """Diffusion times from uniforms u in [0, 1], elementwise (any shape).

  Continuous time (T = 0): t = 1 - u. Discrete time: the grid step
  i = min(floor(u T), T - 1) + 1 in {1..T}, returned as t = i/T. Each t depends on its own
  u only, so a t drawn for one example does not depend on the batch it is evaluated in.

  Args:
    u: float array of uniforms in [0, 1].
    num_steps: 0 for continuous time, else T.

  Returns:
    t, same shape as `u`.
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=True)
  u = _checks.as_float("u", u)
  if num_steps == 0:
    return 1.0 - u
  i = jnp.minimum(jnp.floor(u * num_steps), num_steps - 1) + 1.0
  return i / num_steps


def time_bin(t: ArrayLike, num_bins: int, *, discrete: bool = False) -> jax.Array:
  """Index b in {0..K-1} of the bin (b/K, (b+1)/K] holding t (t = 0 goes to bin 0).

  With `discrete=True`, t is a grid time i/K and b = i - 1, found by rounding: float32
  i/K times K is often a hair above i, which `ceil` would put in the next bin.
  """
  t = _checks.as_float("t", t)
  num_bins = _checks.check_num_steps(num_bins, allow_zero=False)
  upper = jnp.round(t * num_bins) if discrete else jnp.ceil(t * num_bins)
  return jnp.clip(upper.astype(jnp.int32) - 1, 0, num_bins - 1)


def importance_sample_times(
  key: jax.Array,
  batch_size: int,
  bin_probs: ArrayLike,
  *,
  num_steps: int = 0,
  antithetic: bool = True,
) -> tuple[jax.Array, jax.Array]:
  r"""t from a piecewise-constant proposal over K bins, with importance weights 1/p(t).

  The proposal puts mass p_b on the bin (b/K, (b+1)/K] (uniform inside it); t is the
  inverse CDF of the (antithetic, as in `sample_times`) uniforms, so the batch is
  stratified in the proposal's quantiles. The weight w = 1 / (K p_b) is the ratio of
  the uniform density to the proposal's, so for any per-t loss L,
  $\mathbb{E}_{t\sim p}[w\,L(t)] = \mathbb{E}_{t\sim U}[L(t)]$: the diffusion term
  times w stays an unbiased estimate of the same ELBO. The variance of $w L$ is
  smallest for $p(t) \propto \sqrt{\mathbb{E}[L(t)^2]}$ (see `importance_bin_probs`).
  With `num_steps = T > 0`, K must equal T and t = (b + 1)/T is the grid time of step b.

  Args:
    key: `jax.random` key.
    batch_size: B.
    bin_probs: `[K]` positive probabilities (normalised here).
    num_steps: 0 for continuous time, else T (= K).
    antithetic: stratify the uniforms.

  Returns:
    (t `[B]` in (0, 1], weight `[B]`), float32.

  Example: the proposal learnt from per-bin losses, then t and 1/p(t) drawn from it.
    >>> import jax, jax.numpy as jnp
    >>> moments = init_time_moments(4)
    >>> t, loss = jnp.array([0.1, 0.4, 0.6, 0.9]), jnp.array([4.0, 1.0, 1.0, 1.0])
    >>> moments = update_time_moments(moments, t, loss)
    >>> probs = importance_bin_probs(moments)
    >>> probs.tolist()  # sqrt(E[L^2]) = 4, 1, 1, 1, mixed with 1% uniform
    [0.5682, 0.1439, 0.1439, 0.1439]
    >>> t, weight = importance_sample_times(jax.random.key(0), 8, probs)
    >>> t.shape, weight.shape
    ((8,), (8,))
  """
  num_steps = _checks.check_num_steps(num_steps, allow_zero=True)
  probs = _checks.as_float("bin_probs", bin_probs)
  if probs.ndim != 1:
    raise ValueError(f"`bin_probs` must be a vector [K], got shape {probs.shape}.")
  num_bins = probs.shape[0]
  if num_steps and num_bins != num_steps:
    raise ValueError(
      f"Discrete time needs one probability per step: K = {num_bins} != T = {num_steps}."
    )
  probs = probs / jnp.sum(probs)
  u = 1.0 - sample_times(key, batch_size, antithetic=antithetic)  # [0, 1)
  cdf = jnp.cumsum(probs)
  b = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, num_bins - 1)
  weight = 1.0 / (num_bins * probs[b])
  upper = (b + 1).astype(probs.dtype)  # the bin's right edge times K (integer to float)
  if num_steps:
    return upper / num_steps, weight
  frac = jnp.clip((u - (cdf[b] - probs[b])) / probs[b], 0.0, 1.0)
  return (upper - frac) / num_bins, weight  # in (b/K, (b+1)/K]


def update_time_moments(
  moments: TimeMoments,
  t: ArrayLike,
  loss: ArrayLike,
  *,
  decay: float = 0.99,
  num_steps: int = 0,
) -> TimeMoments:
  """Running estimate of E[L(t)^2] per time bin, from one batch of per-t losses.

  Args:
    moments: {"second_moment": `[K]`, "seen": bool `[K]`}; start from `init_time_moments`.
    t: times `[B]`.
    loss: the per-example loss at t, `[B]` (unweighted: not multiplied by 1/p(t)).
    decay: exponential moving average factor for bins with new samples.
    num_steps: T > 0 when t are grid times i/T (then K = T bins, one per step).

  Returns:
    The updated moments; a bin seen for the first time takes its batch mean.
  """
  m, seen = moments["second_moment"], moments["seen"]
  num_bins = m.shape[0]
  b = time_bin(t, num_bins, discrete=num_steps > 0)
  count = jax.ops.segment_sum(jnp.ones_like(loss), b, num_segments=num_bins)
  batch_m = jax.ops.segment_sum(jnp.square(loss), b, num_segments=num_bins) / jnp.maximum(count, 1)
  has = count > 0
  new_m = jnp.where(has, jnp.where(seen, decay * m + (1.0 - decay) * batch_m, batch_m), m)
  return {"second_moment": new_m, "seen": seen | has}


def init_time_moments(num_bins: int) -> TimeMoments:
  """Empty per-bin second moments for `update_time_moments`."""
  num_bins = _checks.check_num_steps(num_bins, allow_zero=False)
  return {
    "second_moment": jnp.zeros((num_bins,), jnp.float32),
    "seen": jnp.zeros((num_bins,), bool),
  }


def importance_bin_probs(moments: TimeMoments, *, uniform_mix: float = 0.01) -> jax.Array:
  r"""The proposal $p_b \propto \sqrt{\mathbb{E}[L^2]}_b$, mixed with a little uniform mass.

  Uniform until every bin has been seen; the uniform share keeps every weight 1/(K p_b)
  below 1/uniform_mix.
  """
  m, seen = moments["second_moment"], moments["seen"]
  root = jnp.sqrt(jnp.maximum(m, 0.0))
  num_bins = m.shape[0]
  total = jnp.sum(root)
  ready = jnp.all(seen) & (total > 0)
  shaped = root / jnp.where(total > 0, total, 1.0)
  probs = (1.0 - uniform_mix) * shaped + uniform_mix / num_bins
  return jnp.where(ready, probs, jnp.full_like(m, 1.0 / num_bins))
