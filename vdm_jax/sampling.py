r"""Samplers of the reverse process (pure functions of a model and its params).

* Ancestral (the derivation's reverse process): $z_1 \sim N(0, I)$, then for t = 1, ..., 1/T,
  $z_s \sim p_\theta(z_s \mid z_t) = N(\mu_\theta(z_t), \sigma_q^2) = q(z_s \mid z_t, x = \hat x(z_t))$,
  and finally $k \sim p(k \mid z_0)$ (or its argmax).
* DDIM (deterministic, $\eta = 0$): $z_s = \alpha_s \hat x + \sigma_s \hat\epsilon$.
* DPM-Solver++(2M) (deterministic, `dpm_solver_2m`): a second-order multistep solver of
  the probability-flow ODE in the log-SNR variable, for few steps (tens, not a thousand).

Classifier-free guidance is the pure `guided_eps`. The samplers are pure functions of
(model, params, key), for any object with `gamma`, `eps_hat`,
`data_shape` and `vocab_size` (a `models.VDM`, or `testing.OracleVDM`); the T-step loop is
a `lax.fori_loop`. `gamma(params, t)` may return one gamma per example (`[B]` for t `[B]`)
or one per example and dimension (`[B, *data_shape]`, a multivariate schedule): every step
is elementwise in gamma, so each dimension then follows its own schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import _checks, elbo, gaussian, predictions, schedules

__all__ = ["METHODS", "ReverseModel", "dpm_solver_2m", "guided_eps", "sample"]

METHODS = ("ancestral", "ddim", "dpm_solver")
"""The reverse-process samplers `sample` accepts as `method`."""


class ReverseModel(Protocol):
  """What the samplers call: a `models.VDM`, or `testing.OracleVDM`.

  `gamma` maps t `[B]` (or a scalar t, for gamma(0)) to `[B]`, a scalar, or
  `[B, *data_shape]` (per dimension); `eps_hat` takes gamma_t in the same form.
  """

  data_shape: tuple[int, ...]
  vocab_size: int

  def gamma(self, params: Any, t: jax.Array) -> jax.Array: ...

  def eps_hat(
    self, params: Any, z_t: jax.Array, gamma_t: jax.Array, *, batch: dict | None = None
  ) -> jax.Array: ...


def sample(
  model: ReverseModel,
  params: Any,
  key: jax.Array,
  num_samples: int,
  *,
  num_steps: int = 1000,
  method: str = "ancestral",
  decode: str = "sample",
  label: int | jax.Array | None = None,
  guidance: float | jax.Array = 0.0,
) -> jax.Array:
  """Draws integer samples `[num_samples, *model.data_shape]` from the model.

  Example (the Bayes-optimal denoiser of x ~ N(0.3, 0.1^2) per dimension: the samples
  land on the bins around 0.3):
    >>> import jax
    >>> from vdm_jax import schedules, testing
    >>> oracle = testing.OracleVDM(
    ...   schedules.LinearSchedule(), testing.GaussianData(0.3, 0.1), data_shape=(4,)
    ... )
    >>> k = sample(oracle, None, jax.random.key(0), 500, num_steps=100)
    >>> k.shape, k.dtype
    ((500, 4), dtype('int32'))
    >>> x = (2 * k + 1) / 256 - 1  # bin centres
    >>> bool(abs(float(x.mean()) - 0.3) < 0.02), bool(abs(float(x.std()) - 0.1) < 0.02)
    (True, True)

  Args:
    model: a `vdm_jax.models.VDM`.
    params: its params (use the EMA params).
    key: `jax.random` key.
    num_samples: how many.
    num_steps: T, the number of reverse steps.
    method: "ancestral", "ddim" or "dpm_solver" (T steps of `dpm_solver_2m`; T + 1
      network calls are T here too: one per step).
    decode: "sample" draws k ~ p(k | z_0); "mode" takes its argmax.
    label: for a class-conditional model (`model.num_classes` C > 0), the class y in
      {0..C-1} of every sample, or an int array `[num_samples]` of one class per sample
      (a traced one too, e.g. under `jax.vmap`); None samples the unconditional
      (null-label) model.
    guidance: classifier-free guidance weight w >= 0 (`guided_eps`), a number or a scalar
      array (a traced one makes guidance part of the compiled function's inputs); needs
      `label`.

  Returns:
    int32 array `[num_samples, *data_shape]` with values in {0..V-1}.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown sampling method {method!r}; choose one of {list(METHODS)}.")
  if decode not in ("sample", "mode"):
    raise ValueError(f"Unknown decode {decode!r}; choose 'sample' or 'mode'.")
  num_steps = _checks.check_num_steps(num_steps, allow_zero=False)
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
  eps_fn = _conditional_eps(model, params, num_samples, label, guidance)
  key_init, key_loop, key_dec = jax.random.split(key, 3)
  shape = (num_samples, *model.data_shape)
  z = jax.random.normal(key_init, shape)

  if method == "dpm_solver":
    gammas = model.gamma(params, 1.0 - jnp.arange(num_steps + 1) / num_steps)
    x_hat_fn = lambda z_t, g: predictions.x_from_eps(z_t, eps_fn(z_t, g), g)
    return _decode(model, params, dpm_solver_2m(x_hat_fn, z, gammas), key_dec, decode)

  def body(i, z):
    # i = 0..T-1 walks t = 1, 1 - 1/T, ..., 1/T.
    t = 1.0 - i / num_steps
    s = t - 1.0 / num_steps
    gamma_t = model.gamma(params, jnp.full((num_samples,), t))
    gamma_s = model.gamma(params, jnp.full((num_samples,), s))
    eps_hat = eps_fn(z, gamma_t)
    x_hat = predictions.x_from_eps(z, eps_hat, gamma_t)
    if method == "ddim":
      alpha_s, sigma_s = schedules.alpha_sigma(_checks.per_example("gamma_s", gamma_s, z))
      return alpha_s * x_hat + sigma_s * eps_hat
    mean, var = gaussian.q_posterior(z, x_hat, gamma_s, gamma_t)
    noise = jax.random.normal(jax.random.fold_in(key_loop, i), shape)
    return mean + jnp.sqrt(var) * noise

  z_0 = jax.lax.fori_loop(0, num_steps, body, z)
  return _decode(model, params, z_0, key_dec, decode)


def _conditional_eps(model, params, num_samples, label, guidance):
  """(z_t, gamma_t) -> eps_hat: unconditional, conditional on `label`, or guided."""
  num_classes = getattr(model, "num_classes", 0)
  guidance = _check_guidance(guidance)
  if label is None:
    if _is_concrete(guidance) and guidance != 0:
      raise ValueError(f"guidance={guidance} needs a label to guide towards; pass label=K.")
    return lambda z, g: model.eps_hat(params, z, g)
  if not num_classes:
    raise ValueError(
      f"label={label!r} given, but this model is not class-conditional (train one with "
      "config.model.conditional=True)."
    )
  cond = {"label": _check_labels(label, num_samples, num_classes)}
  null = {"label": jnp.full((num_samples,), num_classes, jnp.int32)}
  if _is_concrete(guidance) and guidance == 0:
    return lambda z, g: model.eps_hat(params, z, g, batch=cond)
  return lambda z, g: guided_eps(
    model.eps_hat(params, z, g, batch=cond), model.eps_hat(params, z, g, batch=null), guidance
  )


def _is_concrete(x) -> bool:
  """Whether x has a value now (a Python number or an array outside a trace)."""
  return not isinstance(x, jax.core.Tracer)


def _check_guidance(guidance):
  """The guidance weight: a number >= 0, or a scalar float array (checked when concrete)."""
  if isinstance(guidance, (int, float, np.integer, np.floating)) and not isinstance(guidance, bool):
    if not guidance >= 0:
      raise ValueError(f"guidance must be a number >= 0 (0 = unguided), got {guidance!r}.")
    return float(guidance)
  if not isinstance(guidance, jax.Array) or guidance.ndim or guidance.dtype == jnp.bool_:
    raise ValueError(
      f"guidance must be a number >= 0 (0 = unguided) or a scalar array, got {guidance!r}."
    )
  if _is_concrete(guidance):
    if not float(guidance) >= 0:
      raise ValueError(f"guidance must be >= 0 (0 = unguided), got {float(guidance)!r}.")
  return guidance


def _check_labels(label, num_samples: int, num_classes: int) -> jax.Array:
  """int32 labels `[num_samples]` from an int, or an integer array `[]` or `[num_samples]`
  (its values are checked to lie in [0, C) when it is concrete, i.e. not traced)."""
  if isinstance(label, bool) or not isinstance(label, (int, np.integer, jax.Array, np.ndarray)):
    raise ValueError(f"label must be an int in [0, {num_classes}) or an int array, got {label!r}.")
  # Python and numpy labels stay numpy (checked here even inside a trace); a jax array is
  # checked when it has a value.
  labels = label if isinstance(label, jax.Array) else np.asarray(label)
  if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.ndim > 1:
    raise ValueError(
      f"label must be an int in [0, {num_classes}) or an int array [num_samples], got "
      f"dtype {labels.dtype} and shape {labels.shape}."
    )
  if labels.ndim == 1 and labels.shape[0] != num_samples:
    raise ValueError(f"label has {labels.shape[0]} entries for {num_samples} samples.")
  if _is_concrete(labels):
    bad = np.asarray(labels)[(np.asarray(labels) < 0) | (np.asarray(labels) >= num_classes)]
    if bad.size:
      raise ValueError(f"label must be an int in [0, {num_classes}), got {int(bad.ravel()[0])}.")
  return jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (num_samples,))


def _decode(model, params, z_0, key, decode):
  """Integer data from z_0 through the exact discrete decoder p(k | z_0)."""
  gamma_0 = model.gamma(params, jnp.zeros((z_0.shape[0],)))  # [N], or [N, ...] per dimension
  logits = elbo.decoder_logits(z_0, gamma_0, vocab_size=model.vocab_size)
  if decode == "mode":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits).astype(jnp.int32)


def guided_eps(eps_cond: jax.Array, eps_null: jax.Array, guidance: float | jax.Array) -> jax.Array:
  r"""Classifier-free guidance: $(1 + w)\,\hat\epsilon(z, y) - w\,\hat\epsilon(z, \varnothing)$.

  w = 0 is the conditional model itself; w > 0 pushes samples towards where the
  conditional model is more confident than the unconditional (null-label) one. The same
  linear combination of x-predictions is the guided x_hat, since x_hat is affine in
  eps_hat at fixed z_t.

  Example:
    >>> import jax.numpy as jnp
    >>> guided_eps(jnp.ones(3), jnp.zeros(3), 2.0).tolist()
    [3.0, 3.0, 3.0]

  Args:
    eps_cond: eps_hat(z_t, y), `[B, ...]`.
    eps_null: eps_hat(z_t, null label), same shape.
    guidance: w >= 0, a scalar.

  Returns:
    The guided eps_hat, same shape.
  """
  eps_cond = _checks.as_float("eps_cond", eps_cond)
  eps_null = _checks.as_float("eps_null", eps_null)
  _checks.check_same_shape("eps_cond", eps_cond, "eps_null", eps_null)
  w = _checks.as_float("guidance", guidance)
  if w.ndim:
    raise ValueError(f"`guidance` must be a scalar, got shape {tuple(w.shape)}.")
  return (1.0 + w) * eps_cond - w * eps_null


def dpm_solver_2m(
  x_hat_fn: Callable[[jax.Array, jax.Array], jax.Array], z: jax.Array, gammas: jax.Array
) -> jax.Array:
  r"""Solves the probability-flow ODE from gammas[0] to gammas[-1] with DPM-Solver++(2M).

  In the half log-SNR $\lambda = -\gamma/2$ the probability-flow ODE is semi-linear,
  $z_s = \frac{\sigma_s}{\sigma_t} z_t + \sigma_s \int_{\lambda_t}^{\lambda_s}
  e^{\lambda} \hat x(z_\lambda) d\lambda$, and the solver integrates its linear part
  exactly and $\hat x$ by a linear extrapolation through the last two steps. With
  $h = \lambda_s - \lambda_t = (\gamma_t - \gamma_s)/2$ and $h'$ the previous step,

  $D = \hat x_t + \frac{h}{2h'} (\hat x_t - \hat x_{t'})$,
  $z_s = \frac{\sigma_s}{\sigma_t} z_t + \alpha_s (1 - e^{-h}) D$,

  with $D = \hat x_t$ on the first step (which is then exactly a DDIM step). The global
  error is O(h^2): doubling the steps divides it by about 4. One denoiser call per step.

  Example (for x ~ N(0, 1) the exact ODE map is the identity, alpha^2 + sigma^2 = 1;
  twice the steps, about a quarter of the error):
    >>> import jax.numpy as jnp
    >>> from vdm_jax import testing
    >>> data, z_1 = testing.GaussianData(0.0, 1.0), jnp.array([[0.5, -1.0]])
    >>> solve = lambda n: dpm_solver_2m(data.x_hat, z_1, jnp.linspace(5.0, -10.0, n + 1))
    >>> err = lambda n: float(jnp.abs(solve(n) - z_1).max())
    >>> round(err(20), 4), round(err(20) / err(40), 1)
    (0.0081, 3.8)

  Args:
    x_hat_fn: `(z_t [B, ...], gamma_t [B]) -> x_hat [B, ...]`, the denoiser (any
      prediction converted to x, guided or not).
    z: the latents at gammas[0], `[B, ...]`.
    gammas: `[N + 1]` decreasing gamma values (noise to data), N >= 1 steps.

  Returns:
    The latents at gammas[-1], `[B, ...]`.
  """
  z = _checks.as_float("z", z)
  _checks.check_batched("z", z)
  gammas = _checks.as_float("gammas", gammas)
  if gammas.ndim != 1 or gammas.shape[0] < 2:
    raise ValueError(
      f"`gammas` must be a vector of N + 1 >= 2 decreasing values, got shape {gammas.shape}."
    )
  batch = z.shape[0]
  log_a2, log_s2 = schedules.log_alpha2_sigma2(gammas)
  expand = lambda v: v.reshape((1,) * z.ndim)

  def body(i, carry):
    z_t, x_prev, h_prev = carry
    h = 0.5 * (gammas[i] - gammas[i + 1])
    x_t = x_hat_fn(z_t, jnp.full((batch,), gammas[i], z_t.dtype))
    # r = h / (2 h'): 0 on the first step (no history), a first-order (DDIM) step.
    r = jnp.where(i > 0, h / (2.0 * jnp.where(i > 0, h_prev, 1.0)), 0.0)
    d = x_t + expand(r) * (x_t - x_prev)
    ratio = jnp.exp(0.5 * (log_s2[i + 1] - log_s2[i]))
    coef = jnp.exp(0.5 * log_a2[i + 1]) * -jnp.expm1(-h)
    return expand(ratio) * z_t + expand(coef) * d, x_t, h

  init = (z, jnp.zeros_like(z), jnp.zeros((), gammas.dtype))
  return jax.lax.fori_loop(0, gammas.shape[0] - 1, body, init)[0]
