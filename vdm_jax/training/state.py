"""The train state (params, optimizer state, EMA params, time-sampling moments) and the
optimizer: AdamW with linear warm-up, global-norm clipping and weight decay on kernels only.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from vdm_jax import times

__all__ = [
  "TrainState",
  "create_train_state",
  "learning_rate_schedule",
  "make_optimizer",
  "num_time_bins",
  "weight_decay_mask",
]


class TrainState(train_state.TrainState):
  """flax TrainState plus an exponential moving average of the params and, with
  importance sampling of t, the running per-bin second moments of the diffusion loss."""

  ema_params: Any = None
  time_moments: Any = None


def learning_rate_schedule(config) -> optax.Schedule:
  """Linear warm-up from 0 to `optim.learning_rate` over `optim.warmup_steps`, then constant."""
  o = config.optim
  return optax.warmup_constant_schedule(0.0, o.learning_rate, max(o.warmup_steps, 1))


def weight_decay_mask(params):
  """Decay only the networks' kernels: not biases, norm scales or the schedule's parameters.

  The mask has the params' tree structure, empty subtrees included (a fixed schedule's
  `params["schedule"] = {}`), as optax requires.
  """
  empty = flax.traverse_util.empty_node
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), keep_empty_nodes=True)
  mask = {
    path: empty if leaf is empty else (path[0] != "schedule" and path[-1] == "kernel")
    for path, leaf in flat.items()
  }
  return flax.traverse_util.unflatten_dict(mask)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with the warm-up schedule and weight decay of `config.optim` (decay on the
  networks' kernels only: `weight_decay_mask`), after global-norm clipping if `grad_clip` > 0."""
  o = config.optim
  parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
  parts.append(
    optax.adamw(
      learning_rate_schedule(config),
      b1=o.b1,
      b2=o.b2,
      eps=o.eps,
      weight_decay=o.weight_decay,
      mask=weight_decay_mask,
    )
  )
  return optax.chain(*parts)


def num_time_bins(model, config) -> int:
  """Bins of the importance proposal over t: T in discrete time, else loss.time_bins."""
  return model.num_steps or config.loss.time_bins


def create_train_state(model, key, tx: optax.GradientTransformation, config=None) -> TrainState:
  """A fresh `TrainState`: the model's initial parameters, `tx`'s state, an EMA copy, and
  the importance sampler's moments if `config.loss.time_sampling` is "importance"."""
  params = model.init(key)
  importance = config is not None and config.loss.time_sampling == "importance"
  return TrainState.create(
    apply_fn=None,
    params=params,
    tx=tx,
    ema_params=jax.tree.map(jnp.copy, params),  # its own buffers: the step donates both
    time_moments=times.init_time_moments(num_time_bins(model, config)) if importance else None,
  )
