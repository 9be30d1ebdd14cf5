"""The variational diffusion model: a schedule and a denoiser tied to the ELBO terms.

`VDM` holds no parameters and no state: every method is a pure function of a params
pytree `{"schedule": ..., "denoiser": ...}`, built on the pure terms of `vdm_jax.elbo`
(no formula is written twice). `models.make_model(config, info)` builds one from a config.

Example (a small U-Net for the 8x8 digits, V = 17; no data files are read):
  >>> import jax, jax.numpy as jnp
  >>> from vdm_jax import data, models
  >>> from vdm_jax.config import base_config
  >>> config = base_config()
  >>> config.model.n_layer, config.model.n_embd, config.model.norm_groups = 1, 16, 8
  >>> vdm = models.make_model(config, data.dataset_info(config.data))
  >>> params = vdm.init(jax.random.key(0))
  >>> k = jnp.zeros((2, *vdm.data_shape), jnp.int32)            # integer images [B, 8, 8, 1]
  >>> terms = vdm.loss_terms(params, k, jax.random.key(1))      # dict of [B] arrays, nats
  >>> sorted(terms), terms["total"].shape
  (['bpd', 'diffusion', 'prior', 'recon', 't', 'total'], (2,))
  >>> bool(jnp.allclose(terms["total"], terms["recon"] + terms["prior"] + terms["diffusion"]))
  True
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax import elbo, gaussian, predictions, sampling, schedules, times
from vdm_jax.models.interface import as_batch, with_total
from vdm_jax.models.schedule_modules import FixedSchedule

__all__ = ["TERMS", "VDM"]

TERMS = ("recon", "prior", "diffusion")
"""The names of the VDM's loss terms, in nats per example: they sum to the -ELBO."""


@dataclasses.dataclass(frozen=True)
class VDM:
  """A VDM over integer data of shape `data_shape` with `vocab_size` levels.

  Attributes:
    schedule: Flax module t -> gamma(t).
    denoiser: Flax module `(z_t, gamma_t, *, train=False, batch=None)` -> prediction of
      `prediction` kind; `batch` is the data batch (a dict, e.g. with "label"), or None.
    vocab_size: V.
    data_shape: per-example shape, e.g. (8, 8, 1) or (2,).
    prediction: "eps", "x" or "v".
    num_steps: T of the training loss; 0 = continuous time.
    antithetic: antithetic time sampling.
    schedule_objective: "elbo" (every parameter minimises the ELBO) or "variance" (the
      VDM paper's: in continuous time the schedule's shape between its end points gets
      the gradient of E[L_diffusion^2] / (2 E[L_diffusion]), which minimises the
      estimator's variance, while the end points and the denoiser minimise the ELBO;
      see `loss_terms`).
    num_classes: C > 0 for a class-conditional denoiser (batch["label"] in {0..C-1};
      label C is its learned null label), else 0.
  """

  schedule: nn.Module
  denoiser: nn.Module
  vocab_size: int
  data_shape: tuple[int, ...]
  prediction: str = "eps"
  num_steps: int = 0
  antithetic: bool = True
  schedule_objective: str = "elbo"
  num_classes: int = 0
  diffusion_time = True  # the Model interface's flag (class constant, not a field)

  @property
  def num_dims(self) -> int:
    return math.prod(self.data_shape)

  @property
  def terms(self) -> tuple[str, ...]:
    """Names of the per-example loss terms that sum to "total"."""
    return TERMS

  def init(self, key):
    """Returns freshly initialised params `{"schedule": ..., "denoiser": ...}`."""
    key_s, key_d = jax.random.split(key)
    z = jnp.zeros((1, *self.data_shape), jnp.float32)
    return {
      "schedule": self.schedule.init(key_s, jnp.zeros((1,)))["params"]
      if _has_params(self.schedule)
      else {},
      "denoiser": self.denoiser.init(key_d, z, jnp.zeros((1,)), train=False)["params"],
    }

  def gamma(self, params, t):
    """gamma(t) for any array t in [0, 1]."""
    if not params["schedule"]:
      return self.schedule.apply({}, t)
    return self.schedule.apply({"params": params["schedule"]}, t)

  def gamma_and_derivative(self, params, t):
    return schedules.gamma_and_derivative(lambda u: self.gamma(params, u), t)

  def eps_hat(self, params, z_t, gamma_t, *, train: bool = False, dropout_key=None, batch=None):
    """The model's prediction of eps from z_t `[B, ...]` and gamma_t `[B]`; `batch` (the
    data batch's dict, e.g. with "label" `[B]`, or None) is given to the denoiser."""
    rngs = {"dropout": dropout_key} if train else None
    out = self.denoiser.apply(
      {"params": params["denoiser"]}, z_t, gamma_t, train=train, batch=batch, rngs=rngs
    )
    return predictions.prediction_to_eps(out, z_t, gamma_t, parameterization=self.prediction)

  def x_hat(self, params, z_t, gamma_t, *, batch=None):
    """The model's prediction of x (eval mode)."""
    return predictions.x_from_eps(z_t, self.eps_hat(params, z_t, gamma_t, batch=batch), gamma_t)

  def sample(
    self,
    params,
    key,
    num_samples: int,
    *,
    num_steps: int = 1000,
    method: str = "ancestral",
    decode: str = "sample",
    label: int | jax.Array | None = None,
    guidance: float | jax.Array = 0.0,
  ):
    """int32 samples `[num_samples, *data_shape]` (`sampling.sample`: T reverse steps,
    "ancestral", "ddim" or "dpm_solver"; decode "sample" or "mode"; a class-conditional
    model's `label` and guidance weight)."""
    return sampling.sample(
      self,
      params,
      key,
      num_samples,
      num_steps=num_steps,
      method=method,
      decode=decode,
      label=label,
      guidance=guidance,
    )

  def loss_terms(
    self,
    params,
    batch,
    key,
    *,
    train: bool = False,
    num_steps: int | None = None,
    t=None,
    t_weight=None,
  ):
    """The three ELBO terms of each example, in nats.

    The values never depend on `schedule_objective`; with "variance" (continuous time
    only) the gradient reaching the schedule through the diffusion term is split: its
    end points gamma(0), gamma(1) receive the ELBO's gradient, and its normalised shape
    (gamma(t) - gamma(0)) / (gamma(1) - gamma(0)) receives L_i / mean(L) times it, the
    gradient of E[L^2] / (2 E[L]) (L_i the example's diffusion term, the mean over the
    batch), in the same backward pass. The ELBO depends on the shape only through Monte
    Carlo noise (its expectation is the same integral over gamma for every shape), so
    this lowers the estimator's variance without changing what is estimated.

    Args:
      params: model params.
      batch: {"image": integer data `[B, *data_shape]`, ...}, given whole to the denoiser
        (e.g. with "label" `[B]` for a class-conditional one); or that integer array.
      key: `jax.random` key (time, noise and dropout are drawn from it).
      train: dropout on.
      num_steps: T for the diffusion term (default `self.num_steps`; 0 = continuous).
      t: optional explicit times `[B]` (on the grid i/T when T > 0) instead of sampled ones.
      t_weight: optional importance weights `[B]` multiplying the diffusion term, 1/p(t)
        for t drawn from a proposal p (`times.importance_sample_times`).

    Returns:
      dict with "recon", "prior", "diffusion", "total" (nats, `[B]`), "bpd" (`[B]`) and the
      diffusion times "t" (`[B]`).
    """
    num_steps = self.num_steps if num_steps is None else num_steps
    batch = as_batch(batch, self.data_shape)
    k = batch["image"]
    x = elbo.encode(k, self.vocab_size)
    batch_size = x.shape[0]
    key_t, key_0, key_e, key_d = jax.random.split(key, 4)

    gamma_0, gamma_1 = self.gamma(params, jnp.zeros(())), self.gamma(params, jnp.ones(()))
    recon, prior = endpoint_terms(key_0, k, gamma_0, gamma_1, vocab_size=self.vocab_size)

    if t is None:
      t = times.sample_times(key_t, batch_size, num_steps=num_steps, antithetic=self.antithetic)
    eps = jax.random.normal(key_e, x.shape)

    def continuous(denoiser_params, gamma_t, dgamma_dt):
      z_t = gaussian.q_sample(x, gamma_t, eps)
      p = {"denoiser": denoiser_params}  # no closure over the params being differentiated
      eps_hat = self.eps_hat(p, z_t, gamma_t, train=train, dropout_key=key_d, batch=batch)
      return elbo.diffusion_loss_continuous(eps, eps_hat, dgamma_dt)

    if num_steps == 0 and self.schedule_objective == "variance":
      elbo_path, var_path = _schedule_paths(lambda u: self.gamma(params, u), t, gamma_0, gamma_1)
      diffusion = _with_variance_gradient(continuous, params["denoiser"], elbo_path, var_path)
    elif num_steps == 0:
      diffusion = continuous(params["denoiser"], *self.gamma_and_derivative(params, t))
    else:
      gamma_t = self.gamma(params, t)
      gamma_s = self.gamma(params, t - 1.0 / num_steps)
      z_t = gaussian.q_sample(x, gamma_t, eps)
      eps_hat = self.eps_hat(params, z_t, gamma_t, train=train, dropout_key=key_d, batch=batch)
      diffusion = elbo.diffusion_loss_discrete(eps, eps_hat, gamma_s, gamma_t, num_steps=num_steps)
    if t_weight is not None:
      diffusion = diffusion * t_weight

    terms = {"recon": recon, "prior": prior, "diffusion": diffusion}
    return with_total(terms, self.num_dims, t=jnp.broadcast_to(t, (batch_size,)))


def endpoint_terms(key, k, gamma_0, gamma_1, *, vocab_size: int):
  """The ELBO's two end terms of integer data k `[B, ...]`, nats `[B]` each: the
  reconstruction -log p(k | z_0) at one z_0 ~ q(z_0 | x) drawn with `key`, and the prior
  KL(q(z_1 | x) || N(0, I)); gamma_0, gamma_1 scalars, `[B]` or per dimension."""
  x = elbo.encode(k, vocab_size)
  z_0 = gaussian.q_sample(x, gamma_0, jax.random.normal(key, x.shape))
  recon = elbo.reconstruction_loss(k, z_0, gamma_0, vocab_size=vocab_size)
  return recon, elbo.prior_loss(x, gamma_1)


def _schedule_paths(gamma_fn, t, g0, g1):
  """(gamma_t, gamma'_t) twice, with equal values: once differentiable only through the
  end points g0 = gamma(0), g1 = gamma(1), once only through the normalised shape."""
  sg = jax.lax.stop_gradient
  g_t, dg_t = schedules.gamma_and_derivative(gamma_fn, t)
  span = g1 - g0
  shape, dshape = (g_t - g0) / span, dg_t / span
  ends = (g0 + span * sg(shape), span * sg(dshape))
  inner = (sg(g0) + sg(span) * shape, sg(span) * dshape)
  return ends, inner


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _with_variance_gradient(fn, denoiser_params, elbo_path, var_path):
  """fn(denoiser_params, gamma_t, gamma'_t) -> L `[B]`, evaluated at the common value of
  the two paths; the cotangent of `var_path` is multiplied by L / mean(L) per example."""
  return _combined(fn, denoiser_params, elbo_path, var_path)


def _combined(fn, denoiser_params, elbo_path, var_path):
  sg = jax.lax.stop_gradient
  (g_e, dg_e), (g_v, dg_v) = elbo_path, var_path
  return fn(denoiser_params, g_e + g_v - sg(g_v), dg_e + dg_v - sg(dg_v))


def _with_variance_gradient_fwd(fn, denoiser_params, elbo_path, var_path):
  loss, vjp = jax.vjp(lambda p, e, v: _combined(fn, p, e, v), denoiser_params, elbo_path, var_path)
  return loss, (loss, vjp)


def _with_variance_gradient_bwd(fn, residuals, g):
  del fn
  loss, vjp = residuals
  ct_params, ct_elbo, ct_var = vjp(g)
  # Example i's gamma_t and gamma'_t reach only its own L_i, so scaling their cotangents
  # by L_i / mean(L) turns d(sum g_i L_i) into d(sum g_i L_i^2) / (2 mean(L)) along this
  # path: the gradient of the second moment, in the loss's own units (mean(L), the ELBO's
  # diffusion term, does not depend on the shape), so that gradient clipping and the
  # learning rate treat it like the rest of the loss.
  scale = loss / jnp.mean(loss)
  ct_var = jax.tree.map(lambda c: c * scale, ct_var)
  return ct_params, ct_elbo, ct_var


_with_variance_gradient.defvjp(_with_variance_gradient_fwd, _with_variance_gradient_bwd)


def _has_params(module: nn.Module) -> bool:
  return not isinstance(module, FixedSchedule)
