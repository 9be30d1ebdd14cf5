"""The pure training step and its jitted, sharded form.

Not wrapped in `lax.scan`: on XLA:CPU a convolution's weight gradient inside a scan is
~40x slower (docs/benchmarks.md, "Measured facts"). Gradient accumulation
(`config.train.grad_accum_steps` > 1), an opt-in for memory on accelerators, does scan over
the micro-batches of one step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vdm_jax import elbo, streams, times
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.training.state import TrainState, learning_rate_schedule

__all__ = ["jit_train_step", "train_step"]


def train_step(state: TrainState, batch: dict, key, *, model, config):
  """One optimiser step on the mean bits/dim of the batch. Pure; jit it.

  With `config.train.grad_accum_steps` = k > 1 the batch is cut into k micro-batches
  (`micro_batches`) whose gradients are averaged in a `lax.scan` before the one optimiser
  step: the same update as on the whole batch, for the same per-example draws, with about
  1/k of the activation memory. The importance-sampled times are drawn for the whole batch
  and the time moments updated with every micro-batch's losses; the metrics are batch means.

  Args:
    model: the model (a `models.Model`; static).
    state: the train state (params replicated).
    batch: {"image": int32 [B, *data_shape]} and, for labelled data, "label" int32 [B]
      (split over devices); given whole to the model's `loss_terms`.
    key: the run's base key; the step's key is `fold_in(key, state.step)`.

  Returns:
    (new state, metrics dict of scalars).
  """
  step_key = jax.random.fold_in(key, state.step)
  t = t_weight = None
  if state.time_moments is not None:  # importance sampling of t (config.loss.time_sampling)
    t, t_weight = times.importance_sample_times(
      jax.random.fold_in(step_key, streams.STEP_TIMES),
      batch["image"].shape[0],
      times.importance_bin_probs(state.time_moments),
      num_steps=model.num_steps,
      antithetic=model.antithetic,
    )

  accum = config.train.grad_accum_steps
  if accum == 1:
    options = {} if t is None else {"t": t, "t_weight": t_weight}  # only diffusion models

    def loss_fn(params):
      terms = model.loss_terms(params, batch, step_key, train=True, **options)
      return jnp.mean(terms["bpd"]), terms

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  else:
    loss, terms, grads = _accumulated_gradient(
      model, state.params, batch, step_key, accum, t, t_weight
    )
  new_state = state.apply_gradients(grads=grads)
  if state.time_moments is not None:
    new_state = new_state.replace(
      time_moments=times.update_time_moments(
        state.time_moments,
        t,
        terms["diffusion"] / t_weight,
        decay=config.loss.time_decay,
        num_steps=model.num_steps,
      )
    )
  ema = optax.incremental_update(new_state.params, state.ema_params, 1.0 - config.optim.ema_decay)
  new_state = new_state.replace(ema_params=ema)
  metrics = {"loss_bpd": loss, "grad_norm": optax.tree.norm(grads)}
  metrics |= {
    f"{name}_bpd": elbo.bits_per_dim(jnp.mean(terms[name]), model.num_dims) for name in model.terms
  }
  metrics["learning_rate"] = learning_rate_schedule(config)(state.step)
  if model.diffusion_time:
    metrics["gamma_0"] = model.gamma(state.params, jnp.zeros(()))
    metrics["gamma_1"] = model.gamma(state.params, jnp.ones(()))
  return new_state, metrics


def jit_train_step(model, config, mesh, state_sharding):
  """`train_step` jitted over `mesh`: the state sharded as `state_sharding` (and donated),
  the batch split over the devices, the key and the metrics replicated."""
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(
    lambda state, batch, key: train_step(state, batch, key, model=model, config=config),
    in_shardings=(state_sharding, mesh_lib.batch_sharding(mesh), replicated),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0,),
  )


def micro_batches(x, k: int):
  """`[B, ...]` -> `[k, B/k, ...]`, micro-batch i holding rows i, i + k, i + 2k, ...

  Strided, not contiguous: with the batch split over N devices (B divisible by k N), every
  device holds B/(k N) rows of every micro-batch, so the split moves no data between devices.
  """
  return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)


def merge_micro_batches(x):
  """Inverse of `micro_batches`: `[k, B/k, ...]` -> `[B, ...]` in the batch's order."""
  return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def micro_batch_key(step_key, i):
  """Key of micro-batch i of a step with gradient accumulation (time, noise and dropout)."""
  return jax.random.fold_in(jax.random.fold_in(step_key, streams.STEP_MICRO_BATCHES), i)


def _accumulated_gradient(model, params, batch, step_key, k: int, t, t_weight):
  """The gradient of the batch's mean bits/dim, summed over k micro-batches in a `lax.scan`
  (one micro-batch's activations live at a time).

  Returns (mean loss, per-example terms `[B]` in the batch's order, mean gradient). Each
  micro-batch draws its own times (unless `t` is given), noise and dropout from
  `micro_batch_key(step_key, i)`; the result equals one step on the whole batch with those
  same per-example draws. Batch-level statistics are per micro-batch: antithetic times are
  stratified within each micro-batch, and the "variance" schedule objective normalises by the
  micro-batch's mean diffusion loss.
  """
  xs = {"batch": jax.tree.map(lambda v: micro_batches(v, k), batch), "index": jnp.arange(k)}
  if t is not None:
    xs |= {"t": micro_batches(t, k), "t_weight": micro_batches(t_weight, k)}

  def loss_fn(p, x):
    key = micro_batch_key(step_key, x["index"])
    options = {} if t is None else {"t": x["t"], "t_weight": x["t_weight"]}
    terms = model.loss_terms(p, x["batch"], key, train=True, **options)
    return jnp.mean(terms["bpd"]), terms

  def body(grad_sum, x):
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x)
    return jax.tree.map(jnp.add, grad_sum, grads), (loss, terms)

  zeros = jax.tree.map(jnp.zeros_like, params)
  grad_sum, (losses, terms) = jax.lax.scan(body, zeros, xs)
  grads = jax.tree.map(lambda g: g / k, grad_sum)
  return jnp.mean(losses), jax.tree.map(merge_micro_batches, terms), grads
