"""The pure training step and its jitted, sharded form.

Not wrapped in `lax.scan`: on XLA:CPU a convolution's weight gradient inside a scan is
~40x slower (DESIGN §4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vdm_jax import elbo, times
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.training.state import TrainState, learning_rate_schedule

__all__ = ["jit_train_step", "train_step"]


def train_step(state: TrainState, batch: dict, key, *, vdm, config):
  """One optimiser step on the mean bits/dim of the batch. Pure; jit it.

  Args:
    vdm: the model (a `models.Model`; static).
    state: the train state (params replicated).
    batch: {"image": int32 [B, *data_shape]} (split over devices).
    key: the run's base key; the step's key is `fold_in(key, state.step)`.

  Returns:
    (new state, metrics dict of scalars).
  """
  step_key = jax.random.fold_in(key, state.step)
  t = t_weight = None
  if state.time_moments is not None:  # importance sampling of t (config.loss.time_sampling)
    t, t_weight = times.importance_sample_times(
      jax.random.fold_in(step_key, 1),
      batch["image"].shape[0],
      times.importance_bin_probs(state.time_moments),
      num_steps=vdm.num_steps,
      antithetic=vdm.antithetic,
    )

  def loss_fn(params):
    if t is None:
      terms = vdm.loss_terms(params, batch["image"], step_key, train=True)
    else:
      terms = vdm.loss_terms(params, batch["image"], step_key, train=True, t=t, t_weight=t_weight)
    return jnp.mean(terms["bpd"]), terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  if state.time_moments is not None:
    new_state = new_state.replace(
      time_moments=times.update_time_moments(
        state.time_moments,
        t,
        terms["diffusion"] / t_weight,
        decay=config.loss.time_decay,
        num_steps=vdm.num_steps,
      )
    )
  ema = optax.incremental_update(new_state.params, state.ema_params, 1.0 - config.optim.ema_decay)
  new_state = new_state.replace(ema_params=ema)
  metrics = {"loss_bpd": loss, "grad_norm": optax.tree.norm(grads)}
  metrics |= {
    f"{name}_bpd": elbo.bits_per_dim(jnp.mean(terms[name]), vdm.num_dims) for name in vdm.terms
  }
  metrics["learning_rate"] = learning_rate_schedule(config)(state.step)
  if vdm.diffusion_time:
    metrics["gamma_0"] = vdm.gamma(state.params, jnp.zeros(()))
    metrics["gamma_1"] = vdm.gamma(state.params, jnp.ones(()))
  return new_state, metrics


def jit_train_step(vdm, config, mesh, state_sharding):
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(
    lambda state, batch, key: train_step(state, batch, key, vdm=vdm, config=config),
    in_shardings=(state_sharding, {"image": mesh_lib.batch_sharding(mesh)}, replicated),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0,),
  )
