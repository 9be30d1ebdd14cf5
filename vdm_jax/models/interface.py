"""The interface every model implements: what the trainer, evaluation and sampling call.

A model is a frozen dataclass of pure methods over a params pytree (no state): `VDM` and
`GaussianVAE` implement `Model`; a diffusion model (one with a diffusion time t, which the
time samplers, the exact sum over T steps, the probability-flow ODE and the per-time
diagnostics need) also implements `DiffusionModel` and says so with
`diffusion_time = True`. Callers branch on that flag, never on the model's class.

`loss_terms` takes the data batch whole: a dict with "image" (integer data `[B,
*data_shape]`) and any other fields of the batch (e.g. "label" `[B]`), which a diffusion
model hands to its denoiser as `batch=`; a bare integer array stands for {"image": array}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import jax

from vdm_jax import elbo

__all__ = ["DiffusionModel", "Model", "as_batch", "with_total"]

Params = Any  # a pytree of arrays


def as_batch(batch, data_shape: tuple[int, ...] | None = None) -> dict:
  """The batch as a dict with "image": a dict is returned as a dict, an array is wrapped.
  With `data_shape`, raises ValueError unless "image" is `[B, *data_shape]`."""
  if isinstance(batch, Mapping):
    if "image" not in batch:
      raise ValueError(
        f"A batch dict needs the integer data under 'image'; it has keys {sorted(batch)}."
      )
    batch = dict(batch)
  else:
    batch = {"image": batch}
  shape = batch["image"].shape
  if data_shape is not None and tuple(shape[1:]) != tuple(data_shape):
    raise ValueError(f"Data of shape {shape} does not match the model's {tuple(data_shape)}.")
  return batch


def with_total(terms: dict, num_dims: int, **extra) -> dict:
  """`terms` (nats `[B]` each) with their sum "total" and its "bpd" (bits/dim over
  `num_dims`), then `extra` (e.g. the diffusion times "t"): a model's `loss_terms`."""
  total = sum(terms.values())
  return {**terms, "total": total, "bpd": elbo.bits_per_dim(total, num_dims), **extra}


class Model(Protocol):
  """A likelihood model of integer data `[B, *data_shape]` with values in {0..V-1}."""

  vocab_size: int
  data_shape: tuple[int, ...]
  diffusion_time: bool

  @property
  def num_dims(self) -> int:
    """D = prod(data_shape), for bits/dim = nats / (D ln 2)."""
    ...

  @property
  def terms(self) -> tuple[str, ...]:
    """Names of the per-example loss terms (nats) that sum to "total"."""
    ...

  def init(self, key: jax.Array) -> Params:
    """Freshly initialised params."""
    ...

  def loss_terms(self, params: Params, batch, key: jax.Array, *, train: bool = False):
    """dict of `[B]` arrays: each of `terms`, "total" (nats) and "bpd", for `batch` (a dict
    with "image" `[B, *data_shape]`, or that integer array)."""
    ...

  def sample(self, params: Params, key: jax.Array, num_samples: int, **options) -> jax.Array:
    """int32 samples `[num_samples, *data_shape]`."""
    ...


class DiffusionModel(Model, Protocol):
  """A `Model` with a diffusion time t in [0, 1] and a schedule gamma(t) = -log SNR(t)."""

  num_steps: int  # T of the training loss; 0 = continuous time
  antithetic: bool

  def gamma(self, params: Params, t: jax.Array) -> jax.Array: ...

  def eps_hat(
    self, params: Params, z_t: jax.Array, gamma_t: jax.Array, *, batch=None, **kwargs
  ) -> jax.Array: ...

  def loss_terms(
    self,
    params: Params,
    batch,
    key: jax.Array,
    *,
    train: bool = False,
    num_steps: int | None = None,
    t: jax.Array | None = None,
    t_weight: jax.Array | None = None,
  ):
    """As `Model.loss_terms`, plus the diffusion times "t" `[B]`; `num_steps` overrides T,
    `t` gives explicit times and `t_weight` importance weights of the diffusion term."""
    ...
