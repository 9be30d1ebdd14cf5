"""The variational diffusion model: a schedule and a denoiser tied to the ELBO terms.

`VDM` holds no parameters and no state: every method is a pure function of a params
pytree `{"schedule": ..., "denoiser": ...}`, built on the pure terms of `vdm_jax.elbo`
(no formula is written twice). `make_vdm(config, info)` builds one from a config.

Example:
  >>> vdm = make_vdm(config, data.dataset_info(config.data))
  >>> params = vdm.init(jax.random.key(0))
  >>> terms = vdm.loss_terms(params, k, jax.random.key(1))   # dict of [B] arrays, nats
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax import elbo, gaussian, models, schedules

TERMS = ("recon", "prior", "diffusion")


@dataclasses.dataclass(frozen=True)
class VDM:
  """A VDM over integer data of shape `data_shape` with `vocab_size` levels.

  Attributes:
    schedule: Flax module t -> gamma(t).
    denoiser: Flax module (z_t, gamma_t, train) -> prediction of `prediction` kind.
    vocab_size: V.
    data_shape: per-example shape, e.g. (8, 8, 1) or (2,).
    prediction: "eps", "x" or "v".
    num_steps: T of the training loss; 0 = continuous time.
    antithetic: antithetic time sampling.
  """

  schedule: nn.Module
  denoiser: nn.Module
  vocab_size: int
  data_shape: tuple[int, ...]
  prediction: str = "eps"
  num_steps: int = 0
  antithetic: bool = True

  @property
  def num_dims(self) -> int:
    return math.prod(self.data_shape)

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

  def eps_hat(self, params, z_t, gamma_t, *, train: bool = False, dropout_key=None):
    """The model's prediction of eps from z_t `[B, ...]` and gamma_t `[B]`."""
    rngs = {"dropout": dropout_key} if train else None
    out = self.denoiser.apply({"params": params["denoiser"]}, z_t, gamma_t, train=train, rngs=rngs)
    return elbo.prediction_to_eps(out, z_t, gamma_t, self.prediction)

  def x_hat(self, params, z_t, gamma_t):
    """The model's prediction of x (eval mode)."""
    return elbo.x_from_eps(z_t, self.eps_hat(params, z_t, gamma_t), gamma_t)

  def loss_terms(
    self, params, k, key, *, train: bool = False, num_steps: int | None = None, t=None
  ):
    """The three ELBO terms of each example, in nats.

    Args:
      params: model params.
      k: integer data `[B, *data_shape]`.
      key: `jax.random` key (time, noise and dropout are drawn from it).
      train: dropout on.
      num_steps: T for the diffusion term (default `self.num_steps`; 0 = continuous).
      t: optional explicit times `[B]` (on the grid i/T when T > 0) instead of sampled ones.

    Returns:
      dict with "recon", "prior", "diffusion", "total" (nats, `[B]`), "bpd" (`[B]`) and the
      diffusion times "t" (`[B]`).
    """
    num_steps = self.num_steps if num_steps is None else num_steps
    if k.shape[1:] != self.data_shape:
      raise ValueError(f"Data of shape {k.shape} does not match the model's {self.data_shape}.")
    x = elbo.encode(k, self.vocab_size)
    batch = x.shape[0]
    key_t, key_0, key_e, key_d = jax.random.split(key, 4)

    gamma_0, gamma_1 = self.gamma(params, jnp.zeros(())), self.gamma(params, jnp.ones(()))
    z_0 = gaussian.q_sample(x, gamma_0, jax.random.normal(key_0, x.shape))
    recon = elbo.reconstruction_loss(k, z_0, gamma_0, self.vocab_size)
    prior = elbo.prior_loss(x, gamma_1)

    if t is None:
      t = elbo.sample_times(key_t, batch, num_steps=num_steps, antithetic=self.antithetic)
    eps = jax.random.normal(key_e, x.shape)
    if num_steps == 0:
      gamma_t, dgamma_dt = self.gamma_and_derivative(params, t)
    else:
      gamma_t = self.gamma(params, t)
      gamma_s = self.gamma(params, t - 1.0 / num_steps)
    z_t = gaussian.q_sample(x, gamma_t, eps)
    eps_hat = self.eps_hat(params, z_t, gamma_t, train=train, dropout_key=key_d)
    if num_steps == 0:
      diffusion = elbo.diffusion_loss_continuous(eps, eps_hat, dgamma_dt)
    else:
      diffusion = elbo.diffusion_loss_discrete(eps, eps_hat, gamma_s, gamma_t, num_steps)

    total = recon + prior + diffusion
    return {
      "recon": recon,
      "prior": prior,
      "diffusion": diffusion,
      "total": total,
      "bpd": elbo.bits_per_dim(total, self.num_dims),
      "t": jnp.broadcast_to(t, (batch,)),
    }


def _has_params(module: nn.Module) -> bool:
  return not isinstance(module, models.FixedSchedule)


def make_schedule(config) -> nn.Module:
  """The schedule module named by `config.schedule.kind`."""
  kind, lo, hi = config.schedule.kind, config.schedule.gamma_min, config.schedule.gamma_max
  if kind == "linear":
    return models.FixedSchedule(schedules.LinearSchedule(lo, hi))
  if kind == "cosine":
    return models.FixedSchedule(schedules.CosineSchedule(lo, hi))
  if kind == "ddpm":
    return models.FixedSchedule(schedules.DDPMLinearSchedule())
  if kind == "learned_linear":
    return models.LearnedLinearSchedule(lo, hi)
  if kind == "monotone":
    return models.MonotoneSchedule(lo, hi)
  raise ValueError(f"Unknown config.schedule.kind {kind!r}.")


def make_vdm(config, info) -> VDM:
  """Builds the VDM of `config` for data described by `info` (a `data.DatasetInfo`)."""
  m = config.model
  lo, hi = config.schedule.gamma_min, config.schedule.gamma_max
  if m.denoiser == "unet":
    if len(info.shape) != 3:
      raise ValueError(
        f"config.model.denoiser='unet' needs image data [H, W, C]; {info.name} has shape "
        f"{info.shape}. Use config.model.denoiser='mlp'."
      )
    denoiser = models.UNet(
      n_layer=m.n_layer,
      n_embd=m.n_embd,
      norm_groups=m.norm_groups,
      dropout=m.dropout,
      fourier_features=m.fourier_features,
      attention_everywhere=m.attention_everywhere,
      gamma_min=lo,
      gamma_max=hi,
      vocab_size=info.vocab_size,
    )
  elif m.denoiser == "mlp":
    if len(info.shape) != 1:
      raise ValueError(
        f"config.model.denoiser='mlp' needs flat data [D]; {info.name} has shape {info.shape}."
      )
    denoiser = models.MLPDenoiser(
      hidden=m.mlp_hidden,
      num_layers=m.mlp_layers,
      fourier_features=m.fourier_features,
      gamma_min=lo,
      gamma_max=hi,
      vocab_size=info.vocab_size,
    )
  else:
    raise ValueError(f"Unknown config.model.denoiser {m.denoiser!r}.")
  return VDM(
    schedule=make_schedule(config),
    denoiser=denoiser,
    vocab_size=info.vocab_size,
    data_shape=tuple(info.shape),
    prediction=m.prediction,
    num_steps=config.loss.num_steps,
    antithetic=config.loss.antithetic,
  )
