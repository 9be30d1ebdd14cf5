r"""A diffusion model with a learned, input-adaptive, per-dimension noise schedule.

The VDM's forward process q(z_t | x) = N(alpha_t x, sigma_t^2 I) uses one schedule for every
data dimension and every example. Here each example x draws an auxiliary latent
c ~ q(c | x) (a small Gaussian, `VAEEncoder`), and the forward process conditional on c
is diagonal with one schedule per dimension,

  q(z_t | x, c) = N(alpha_t(c) * x, diag sigma_t(c)^2),  gamma_d(c, t) = -log SNR_d(c, t),

where gamma(c, t) has the data's shape, is strictly increasing in t and runs from
gamma_min to gamma_max in every dimension (`schedules.square_polynomial_gamma`: gamma'
is a square, (a t^2 + b t + c)^2 + eps, with (a, b, c) per dimension from an MLP of c).
This is the idea of MuLAN (Sahoo et al., "Diffusion Models With Learned Adaptive Noise",
NeurIPS 2024), designed here in the project's terms; docs/adaptive.md explains it.

The generative model is p(c) p(z_1 | c) prod p(z_s | z_t, c) p(x | z_0, c), with p(c) =
N(0, I) and the denoiser conditioned on c and on the gamma_t map. Its ELBO is

  -log p(x) <= E_{q(c|x)}[ recon + prior + diffusion ](x, c) + KL(q(c | x) || N(0, I)),

each bracketed term the VDM's with the per-dimension gamma (the pure functions of
`vdm_jax.elbo` take gamma `[B, *data_shape]`), estimated with one c per example; the last
term is "latent_kl". Since gamma(c, 0) = gamma_min and gamma(c, 1) = gamma_max, the
reconstruction and prior terms do not depend on c; the schedule's shape in between
changes the diffusion term (the ELBO of a multivariate process is not invariant to it).

Example (a small MLP denoiser for the 2-D toy data; no data files are read):
  >>> import jax, jax.numpy as jnp
  >>> from vdm_jax import data, models
  >>> from vdm_jax.config import base_config
  >>> config = base_config()
  >>> config.data.name, config.model.kind, config.model.denoiser = "toy2d", "adaptive", "mlp"
  >>> config.model.mlp_hidden, config.model.adaptive_hidden = 32, 32
  >>> model = models.make_model(config, data.dataset_info(config.data))
  >>> params = model.init(jax.random.key(0))
  >>> k = jnp.zeros((3, *model.data_shape), jnp.int32)          # [B, 2], V = 256
  >>> terms = model.loss_terms(params, k, jax.random.key(1))
  >>> sorted(terms)
  ['bpd', 'diffusion', 'latent_kl', 'prior', 'recon', 't', 'total']
  >>> c = jnp.zeros((3, model.latent_dim))
  >>> gamma, dgamma = model.gamma_map(params, c, jnp.array([0.0, 0.5, 1.0]))  # per dimension
  >>> gamma.shape, gamma[:, 0].tolist()                       # linear at initialisation
  ((3, 2), [-13.3, -4.15, 5.0])
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax import elbo, gaussian, predictions, sampling, schedules, times
from vdm_jax.models.interface import as_batch, with_total
from vdm_jax.models.vae import VAEEncoder
from vdm_jax.models.vdm import endpoint_terms

__all__ = [
  "TERMS",
  "AdaptiveSchedule",
  "AdaptiveVDM",
  "LatentConditioned",
  "LatentConditionedDenoiser",
]

TERMS = ("recon", "prior", "diffusion", "latent_kl")
"""The adaptive model's loss terms, in nats per example: the VDM's three and the latent's KL;
they sum to the -ELBO."""


def _linear_start(num_dims: int):
  """Bias init of the coefficient layer: (a, b, c) = (0, 0, 1) per dimension, so every
  dimension starts on the linear schedule."""

  def init(key, shape, dtype=jnp.float32):
    del key
    assert shape == (3 * num_dims,), shape
    return jnp.tile(jnp.asarray([0.0, 0.0, 1.0], dtype), num_dims)

  return init


class AdaptiveSchedule(nn.Module):
  """(c `[B, L]`, t `[B]`) -> (gamma, gamma') `[B, *data_shape]` each, closed form.

  (a, b, c) per dimension = MLP(c), the last layer zero-initialised with the linear
  schedule as its bias; gamma = `schedules.square_polynomial_gamma` of them.
  """

  data_shape: tuple[int, ...]
  hidden: int = 128
  gamma_min: float = -13.3
  gamma_max: float = 5.0

  @nn.compact
  def __call__(self, c, t):
    num_dims = math.prod(self.data_shape)
    h = nn.swish(nn.Dense(self.hidden, name="dense0")(c))
    h = nn.swish(nn.Dense(self.hidden, name="dense1")(h))
    coeffs = nn.Dense(
      3 * num_dims,
      kernel_init=nn.initializers.zeros,
      bias_init=_linear_start(num_dims),
      name="coeffs",
    )(h)
    coeffs = coeffs.reshape((c.shape[0], *self.data_shape, 3))
    t = t.reshape((c.shape[0],) + (1,) * len(self.data_shape))
    return schedules.square_polynomial_gamma(
      coeffs, t, gamma_min=self.gamma_min, gamma_max=self.gamma_max
    )


class LatentConditionedDenoiser(nn.Module):
  """A registered denoiser (z `[B, ...]`, gamma `[B]`) -> like z, conditioned on the
  per-dimension gamma map and the latent c.

  The inner network sees concat(z, (gamma - gamma_min) / (gamma_max - gamma_min),
  Dense(c) shaped like z) along the last axis and the per-example mean of gamma as its
  scalar conditioning; its output's first C channels (those of z) are the prediction.
  """

  inner: nn.Module
  gamma_min: float = -13.3
  gamma_max: float = 5.0

  @nn.compact
  def __call__(self, z, gamma, *, train: bool = False, batch=None, latent=None):
    del batch  # unconditional data model; c is the conditioning
    if latent is None:
      raise ValueError("LatentConditionedDenoiser needs the latent c (`latent=`, [B, L]).")
    if gamma.shape != z.shape:
      raise ValueError(f"gamma must be per dimension, shape {z.shape}; got {gamma.shape}.")
    num_dims = math.prod(z.shape[1:])
    c_map = nn.Dense(num_dims, name="latent")(latent).reshape(z.shape)
    g_norm = (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
    h = jnp.concatenate([z, g_norm, c_map], axis=-1)
    gamma_mean = jnp.mean(gamma.reshape(z.shape[0], -1), axis=-1)
    return self.inner(h, gamma_mean, train=train)[..., : z.shape[-1]]


@dataclasses.dataclass(frozen=True, eq=False)
class LatentConditioned:
  """The model with its latent fixed to c `[B, L]`: the reverse process p(. | c) of B
  examples, as the samplers and the probability-flow ODE call it (`gamma` and
  `gamma_and_derivative` give `[B, *data_shape]`)."""

  model: AdaptiveVDM
  c: jax.Array

  @property
  def data_shape(self) -> tuple[int, ...]:
    return self.model.data_shape

  @property
  def vocab_size(self) -> int:
    return self.model.vocab_size

  @property
  def num_dims(self) -> int:
    return self.model.num_dims

  def gamma_and_derivative(self, params, t):
    return self.model.gamma_map(params, self.c, t)

  def gamma(self, params, t):
    return self.gamma_and_derivative(params, t)[0]

  def eps_hat(self, params, z_t, gamma_t, *, train: bool = False, dropout_key=None, batch=None):
    return self.model.eps_hat(
      params, z_t, gamma_t, latent=self.c, train=train, dropout_key=dropout_key, batch=batch
    )

  def x_hat(self, params, z_t, gamma_t):
    return predictions.x_from_eps(z_t, self.eps_hat(params, z_t, gamma_t), gamma_t)


@dataclasses.dataclass(frozen=True)
class AdaptiveVDM:
  """A VDM whose schedule is per dimension and adapts to each input through a latent c.

  Attributes:
    encoder: q(c | x), a `VAEEncoder` (mean, log-variance `[B, latent_dim]`).
    schedule: `AdaptiveSchedule`, (c, t) -> (gamma, gamma') of the data's shape.
    denoiser: `LatentConditionedDenoiser`.
    vocab_size: V.
    data_shape: per-example shape.
    latent_dim: L.
    prediction: "eps", "x" or "v".
    num_steps: T of the training loss; 0 = continuous time.
    antithetic: antithetic time sampling.
  """

  encoder: nn.Module
  schedule: nn.Module
  denoiser: nn.Module
  vocab_size: int
  data_shape: tuple[int, ...]
  latent_dim: int
  prediction: str = "eps"
  num_steps: int = 0
  antithetic: bool = True
  diffusion_time = True  # the Model interface's flags (class constants, not fields)
  auxiliary_latent = True

  @property
  def num_dims(self) -> int:
    return math.prod(self.data_shape)

  @property
  def terms(self) -> tuple[str, ...]:
    return TERMS

  def init(self, key):
    """Fresh params `{"encoder": ..., "schedule": ..., "denoiser": ...}`."""
    key_e, key_s, key_d = jax.random.split(key, 3)
    x = jnp.zeros((1, *self.data_shape), jnp.float32)
    c = jnp.zeros((1, self.latent_dim), jnp.float32)
    return {
      "encoder": self.encoder.init(key_e, x)["params"],
      "schedule": self.schedule.init(key_s, c, jnp.zeros((1,)))["params"],
      "denoiser": self.denoiser.init(key_d, x, x, latent=c)["params"],
    }

  def posterior(self, params, x):
    """q(c | x): (mean, variance) `[B, L]` each, for bin centres x `[B, *data_shape]`."""
    mean, log_var = self.encoder.apply({"params": params["encoder"]}, x)
    return mean, jnp.exp(log_var)

  def gamma_map(self, params, c, t):
    """(gamma, gamma') `[B, *data_shape]` for latents c `[B, L]` and times t `[B]` or `[]`."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), c.shape[:1])
    return self.schedule.apply({"params": params["schedule"]}, c, t)

  def gamma(self, params, t):
    """A summary for logs and tables: gamma at the prior's mean c = 0, averaged over the
    dimensions, with the shape of t. The end points are exact (gamma_min, gamma_max for
    every c); the model's own schedule is per example and dimension (`gamma_map`)."""
    t = jnp.asarray(t, jnp.float32)
    flat = t.reshape(-1)
    gamma, _ = self.gamma_map(params, jnp.zeros((flat.size, self.latent_dim)), flat)
    return jnp.mean(gamma.reshape(flat.size, -1), axis=-1).reshape(t.shape)

  def eps_hat(
    self, params, z_t, gamma_t, *, latent, train: bool = False, dropout_key=None, batch=None
  ):
    """eps prediction from z_t, the gamma_t map (both `[B, *data_shape]`) and c `[B, L]`;
    `batch` (the data batch's dict, or None) is given to the denoiser."""
    rngs = {"dropout": dropout_key} if train else None
    out = self.denoiser.apply(
      {"params": params["denoiser"]},
      z_t,
      gamma_t,
      latent=latent,
      train=train,
      batch=batch,
      rngs=rngs,
    )
    return predictions.prediction_to_eps(out, z_t, gamma_t, parameterization=self.prediction)

  def conditioned(self, c) -> LatentConditioned:
    """The reverse process given latents c `[B, L]` (for `sampling.sample`, the ODE)."""
    return LatentConditioned(self, c)

  def condition(self, params, k, key):
    """Draws c ~ q(c | x) for integer data k `[B, ...]`: (`conditioned(c)`, KL `[B]` nats).

    A likelihood computed for the conditioned model, -log p(x | c), plus the KL bounds
    -log p(x) (the probability-flow ODE uses this, see docs/adaptive.md).
    """
    mean, var = self.posterior(params, elbo.encode(k, self.vocab_size))
    c = mean + jnp.sqrt(var) * jax.random.normal(key, mean.shape)
    return self.conditioned(c), _latent_kl(mean, var)

  def sample(
    self,
    params,
    key,
    num_samples: int,
    *,
    num_steps: int = 1000,
    method: str = "ancestral",
    decode: str = "sample",
  ):
    """int32 samples `[num_samples, *data_shape]`: c ~ N(0, I), then `sampling.sample`
    with the schedule and denoiser of that c."""
    key_c, key_s = jax.random.split(key)
    c = jax.random.normal(key_c, (num_samples, self.latent_dim))
    return sampling.sample(
      self.conditioned(c),
      params,
      key_s,
      num_samples,
      num_steps=num_steps,
      method=method,
      decode=decode,
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
    """The ELBO terms of each example, in nats, with one c ~ q(c | x) per example.

    Args and returns as `VDM.loss_terms` (`batch` a dict with "image" or that integer
    array; other fields unused), with the extra term "latent_kl" =
    KL(q(c | x) || N(0, I)) in the sum "total".
    """
    num_steps = self.num_steps if num_steps is None else num_steps
    k = as_batch(batch, self.data_shape)["image"]
    x = elbo.encode(k, self.vocab_size)
    batch_size = x.shape[0]
    key_c, key_t, key_0, key_e, key_d = jax.random.split(key, 5)

    mean, var = self.posterior(params, x)
    c = mean + jnp.sqrt(var) * jax.random.normal(key_c, mean.shape)
    latent_kl = _latent_kl(mean, var)

    gamma_0, _ = self.gamma_map(params, c, 0.0)  # = gamma_min everywhere, whatever c
    gamma_1, _ = self.gamma_map(params, c, 1.0)
    recon, prior = endpoint_terms(key_0, k, gamma_0, gamma_1, vocab_size=self.vocab_size)

    if t is None:
      t = times.sample_times(key_t, batch_size, num_steps=num_steps, antithetic=self.antithetic)
    t = jnp.broadcast_to(t, (batch_size,))
    eps = jax.random.normal(key_e, x.shape)
    gamma_t, dgamma_t = self.gamma_map(params, c, t)
    z_t = gaussian.q_sample(x, gamma_t, eps)
    eps_hat = self.eps_hat(params, z_t, gamma_t, latent=c, train=train, dropout_key=key_d)
    if num_steps == 0:
      diffusion = elbo.diffusion_loss_continuous(eps, eps_hat, dgamma_t)
    else:
      gamma_s, _ = self.gamma_map(params, c, t - 1.0 / num_steps)
      diffusion = elbo.diffusion_loss_discrete(eps, eps_hat, gamma_s, gamma_t, num_steps=num_steps)
    if t_weight is not None:
      diffusion = diffusion * t_weight

    terms = {"recon": recon, "prior": prior, "diffusion": diffusion, "latent_kl": latent_kl}
    return with_total(terms, self.num_dims, t=t)


def _latent_kl(mean, var):
  """KL(N(mean, diag var) || N(0, I)) `[B]` in nats."""
  return jnp.sum(gaussian.gaussian_kl(mean, var, 0.0, 1.0), axis=-1)


def build(config, info, inner_denoiser: nn.Module) -> AdaptiveVDM:
  """The `config.model.kind = "adaptive"` model for data described by `info`; the inner
  network is the configured denoiser (`config.model.denoiser`)."""
  m, s = config.model, config.schedule
  shape = tuple(info.shape)
  return AdaptiveVDM(
    encoder=VAEEncoder(latent_dim=m.adaptive_latent_dim, hidden=m.adaptive_hidden, num_layers=2),
    schedule=AdaptiveSchedule(
      data_shape=shape, hidden=m.adaptive_hidden, gamma_min=s.gamma_min, gamma_max=s.gamma_max
    ),
    denoiser=LatentConditionedDenoiser(inner_denoiser, s.gamma_min, s.gamma_max),
    vocab_size=info.vocab_size,
    data_shape=shape,
    latent_dim=m.adaptive_latent_dim,
    prediction=m.prediction,
    num_steps=config.loss.num_steps,
    antithetic=config.loss.antithetic,
  )
