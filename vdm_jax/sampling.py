r"""Samplers of the reverse process (pure functions of a model and its params).

* Ancestral (the seed's reverse process): z_1 ~ N(0, I), then for t = 1, ..., 1/T,
  z_s ~ p_theta(z_s | z_t) = N(mu_theta(z_t), sigma_q^2) = q(z_s | z_t, x = x_hat(z_t)),
  and finally k ~ p(k | z_0) (or its argmax).
* DDIM (deterministic, eta = 0): z_s = alpha_s x_hat + sigma_s eps_hat.

Both are pure functions of (vdm, params, key), for any object with `gamma`, `eps_hat`,
`data_shape` and `vocab_size` (a `models.VDM`, or `testing.OracleVDM`); the T-step loop is
a `lax.fori_loop`. `gamma(params, t)` may return one gamma per example (`[B]` for t `[B]`)
or one per example and dimension (`[B, *data_shape]`, a multivariate schedule): every step
is elementwise in gamma, so each dimension then follows its own schedule.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

from vdm_jax import _checks, elbo, gaussian, predictions, schedules

__all__ = ["METHODS", "ReverseModel", "sample"]

METHODS = ("ancestral", "ddim")


class ReverseModel(Protocol):
  """What the samplers call: a `models.VDM`, or `testing.OracleVDM`.

  `gamma` maps t `[B]` (or a scalar t, for gamma(0)) to `[B]`, a scalar, or
  `[B, *data_shape]` (per dimension); `eps_hat` takes gamma_t in the same form.
  """

  data_shape: tuple[int, ...]
  vocab_size: int

  def gamma(self, params: Any, t: jax.Array) -> jax.Array: ...

  def eps_hat(self, params: Any, z_t: jax.Array, gamma_t: jax.Array) -> jax.Array: ...


def sample(
  vdm: ReverseModel,
  params: Any,
  key: jax.Array,
  num_samples: int,
  *,
  num_steps: int = 1000,
  method: str = "ancestral",
  decode: str = "sample",
) -> jax.Array:
  """Draws integer samples `[num_samples, *vdm.data_shape]` from the model.

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
    vdm: a `vdm_jax.vdm.VDM`.
    params: its params (use the EMA params).
    key: `jax.random` key.
    num_samples: how many.
    num_steps: T, the number of reverse steps.
    method: "ancestral" or "ddim".
    decode: "sample" draws k ~ p(k | z_0); "mode" takes its argmax.

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
  key_init, key_loop, key_dec = jax.random.split(key, 3)
  shape = (num_samples, *vdm.data_shape)
  z = jax.random.normal(key_init, shape)

  def body(i, z):
    # i = 0..T-1 walks t = 1, 1 - 1/T, ..., 1/T.
    t = 1.0 - i / num_steps
    s = t - 1.0 / num_steps
    gamma_t = vdm.gamma(params, jnp.full((num_samples,), t))
    gamma_s = vdm.gamma(params, jnp.full((num_samples,), s))
    eps_hat = vdm.eps_hat(params, z, gamma_t)
    x_hat = predictions.x_from_eps(z, eps_hat, gamma_t)
    if method == "ddim":
      alpha_s, sigma_s = schedules.alpha_sigma(_checks.per_example("gamma_s", gamma_s, z))
      return alpha_s * x_hat + sigma_s * eps_hat
    mean, var = gaussian.q_posterior(z, x_hat, gamma_s, gamma_t)
    noise = jax.random.normal(jax.random.fold_in(key_loop, i), shape)
    return mean + jnp.sqrt(var) * noise

  z_0 = jax.lax.fori_loop(0, num_steps, body, z)
  gamma_0 = vdm.gamma(params, jnp.zeros((num_samples,)))  # [N], or [N, ...] per dimension
  logits = elbo.decoder_logits(z_0, gamma_0, vocab_size=vdm.vocab_size)
  if decode == "mode":
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key_dec, logits).astype(jnp.int32)
