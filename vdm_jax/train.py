"""Training: train state with EMA, sharded pure steps, orbax resume, the loop.

One readable trainer, top to bottom:

  1. Train state and optimiser (optax AdamW, warm-up, clipping, masked weight decay, EMA).
  2. Mesh and shardings (a 1-D ("data",) mesh of every device of every host).
  3. Pure steps: `train_step(state, batch, key)` and `eval_step(params, batch, key)`.
  4. Checkpoints (orbax CheckpointManager: train state + data iterator, async, resume).
  5. The loop `train_and_evaluate(config, workdir)`.

The steps are not wrapped in `lax.scan`: on XLA:CPU a convolution's weight gradient
inside a scan is ~40x slower (DESIGN §4).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vdm_jax import config as config_lib
from vdm_jax import data, elbo, evaluation, sampling
from vdm_jax.vdm import VDM, make_model

__all__ = [
  "NonFiniteLossError",
  "TrainState",
  "abstract_state",
  "check_batch_size",
  "check_workdir",
  "create_train_state",
  "jit_train_step",
  "learning_rate_schedule",
  "load_ema_params",
  "make_checkpoint_manager",
  "make_mesh",
  "make_optimizer",
  "num_time_bins",
  "restore_checkpoint",
  "save_checkpoint",
  "to_global",
  "train_and_evaluate",
  "train_step",
  "weight_decay_mask",
  "write_samples",
]

# ---------------------------------------------------------------------------
# 1. Train state and optimiser.
# ---------------------------------------------------------------------------


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
  """Decay only the networks' kernels: not biases, norm scales or the schedule's parameters."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  mask = {path: path[0] != "schedule" and path[-1] == "kernel" for path in flat}
  return flax.traverse_util.unflatten_dict(mask)


def make_optimizer(config) -> optax.GradientTransformation:
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


def num_time_bins(vdm, config) -> int:
  """Bins of the importance proposal over t: T in discrete time, else loss.time_bins."""
  return vdm.num_steps or config.loss.time_bins


def create_train_state(vdm, key, tx: optax.GradientTransformation, config=None) -> TrainState:
  params = vdm.init(key)
  importance = config is not None and config.loss.time_sampling == "importance"
  return TrainState.create(
    apply_fn=None,
    params=params,
    tx=tx,
    ema_params=jax.tree.map(jnp.copy, params),  # its own buffers: the step donates both
    time_moments=elbo.init_time_moments(num_time_bins(vdm, config)) if importance else None,
  )


# ---------------------------------------------------------------------------
# 2. Mesh and shardings.
# ---------------------------------------------------------------------------


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over every device. Auto axis type: jax 0.10's default (Explicit)
  would put shardings into the types and reject Flax's dropout `select`."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch_size(batch_size: int, what: str = "config.train.batch_size") -> None:
  n = jax.device_count()
  if batch_size % n:
    raise ValueError(
      f"{what} ({batch_size}) must be divisible by the number of devices ({n}); "
      f"try {-(-batch_size // n) * n}."
    )


def to_global(batch: dict, mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays split over the "data" axis."""
  sharding = NamedSharding(mesh, P("data"))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


# ---------------------------------------------------------------------------
# 3. Pure steps.
# ---------------------------------------------------------------------------


def train_step(state: TrainState, batch: dict, key, *, vdm, config):
  """One optimiser step on the mean bits/dim of the batch. Pure; jit it.

  Args:
    vdm: the model (`VDM` or `vae.GaussianVAE`; static).
    state: the train state (params replicated).
    batch: {"image": int32 [B, *data_shape]} (split over devices).
    key: the run's base key; the step's key is `fold_in(key, state.step)`.

  Returns:
    (new state, metrics dict of scalars).
  """
  step_key = jax.random.fold_in(key, state.step)
  t = t_weight = None
  if state.time_moments is not None:  # importance sampling of t (config.loss.time_sampling)
    t, t_weight = elbo.importance_sample_times(
      jax.random.fold_in(step_key, 1),
      batch["image"].shape[0],
      elbo.importance_bin_probs(state.time_moments),
      num_steps=vdm.num_steps,
      antithetic=vdm.antithetic,
    )

  def loss_fn(params):
    terms = vdm.loss_terms(params, batch["image"], step_key, train=True, t=t, t_weight=t_weight)
    return jnp.mean(terms["bpd"]), terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  if state.time_moments is not None:
    new_state = new_state.replace(
      time_moments=elbo.update_time_moments(
        state.time_moments,
        t,
        terms["diffusion"] / t_weight,
        decay=config.loss.time_decay,
        num_steps=vdm.num_steps,
      )
    )
  ema = optax.incremental_update(new_state.params, state.ema_params, 1.0 - config.optim.ema_decay)
  new_state = new_state.replace(ema_params=ema)
  to_bpd = 1.0 / (vdm.num_dims * math.log(2.0))
  metrics = {"loss_bpd": loss, "grad_norm": optax.tree.norm(grads)}
  metrics |= {f"{name}_bpd": jnp.mean(terms[name]) * to_bpd for name in vdm.terms}
  metrics["learning_rate"] = learning_rate_schedule(config)(state.step)
  if isinstance(vdm, VDM):
    metrics["gamma_0"] = vdm.gamma(state.params, jnp.zeros(()))
    metrics["gamma_1"] = vdm.gamma(state.params, jnp.ones(()))
  return new_state, metrics


def jit_train_step(vdm, config, mesh, state_sharding):
  replicated = NamedSharding(mesh, P())
  batch_sharding = {"image": NamedSharding(mesh, P("data"))}
  return jax.jit(
    lambda state, batch, key: train_step(state, batch, key, vdm=vdm, config=config),
    in_shardings=(state_sharding, batch_sharding, replicated),
    out_shardings=(state_sharding, replicated),
    donate_argnums=(0,),
  )


# ---------------------------------------------------------------------------
# 4. Checkpoints.
# ---------------------------------------------------------------------------


def make_checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
    max_to_keep=config.train.max_to_keep,
    cleanup_tmp_directories=True,
    enable_async_checkpointing=True,
  )
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), "checkpoints"), options=options
  )


def abstract_state(state_shapes, sharding):
  """ShapeDtypeStructs carrying the current mesh's sharding: an orbax restore target."""
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state_shapes
  )


def _saved_fields(state) -> dict:
  """The train state's array fields as a dict, leaving out those that are None.

  Checkpoints hold this dict, so a field used only by some configs (`time_moments`, with
  importance sampling of t) is absent from the others' checkpoints instead of a None that
  would make older checkpoints unreadable.
  """
  names = ("step", "params", "opt_state", "ema_params", "time_moments")
  return {n: getattr(state, n) for n in names if getattr(state, n) is not None}


def save_checkpoint(manager, step: int, state, train_iter, *, force: bool = False) -> None:
  manager.save(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardSave(_saved_fields(state)),
      data=grain.checkpoint.CheckpointSave(train_iter),
    ),
    force=force,
  )


def restore_checkpoint(manager, step: int, target, train_iter=None):
  """Restores the train state (into `target`'s shardings) and, if given, the data iterator.

  `target` is a TrainState of ShapeDtypeStructs (`abstract_state`); returns a TrainState.
  """
  items = {"state": ocp.args.StandardRestore(_saved_fields(target))}
  if train_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(train_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))["state"]
  return target.replace(**restored)


def load_ema_params(config, workdir: str, *, step: int | None = None):
  """Restores a checkpoint's EMA params, replicated over the current devices.

  Works whatever device count trained it: the restore target carries this process's mesh.

  Returns:
    (vdm, mesh, ema_params, step).
  """
  config_lib.validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"No checkpoints in {workdir!r} (expected {ckpt_dir!r}).")
  mesh = make_mesh()
  vdm = make_model(config, data.static_info(config.data))
  tx = make_optimizer(config)
  shapes = jax.eval_shape(lambda k: create_train_state(vdm, k, tx, config), jax.random.key(0))
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  with ocp.CheckpointManager(ckpt_dir, options=options) as manager:
    steps = manager.all_steps()
    if not steps:
      raise FileNotFoundError(f"No finished checkpoint in {ckpt_dir!r}.")
    step = manager.latest_step() if step is None else step
    if step not in steps:
      raise ValueError(
        f"No checkpoint for step {step} in {ckpt_dir!r}; available: {sorted(steps)}."
      )
    state = restore_checkpoint(manager, step, abstract_state(shapes, NamedSharding(mesh, P())))
  return vdm, mesh, state.ema_params, step


# ---------------------------------------------------------------------------
# 5. The loop.
# ---------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
  pass


def check_workdir(workdir: str) -> str:
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"Work directory {workdir!r} is not writable: {e}") from e
  return workdir


class _Writer:
  """Scalars to TensorBoard event files, `metrics.jsonl` and stdout; only process 0 writes."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      self._jsonl = os.path.join(workdir, "metrics.jsonl")
      from vdm_jax import _deps

      if _deps.available("tensorboardX"):  # the optional `tensorboard` extra
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      else:
        logging.warning(
          "tensorboardX is not installed: metrics go to metrics.jsonl and stdout only "
          "(pip install 'vdm_jax[tensorboard]' for TensorBoard event files)."
        )

  def scalars(self, step: int, values: dict, kind: str) -> None:
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    for k, v in values.items():
      if self._tb is not None:
        self._tb.add_scalar(f"{kind}/{k}", v, step)
    with open(self._jsonl, "a") as f:
      f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
    text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    logging.info("[%s] step %d: %s", kind, step, text)
    print(f"[{kind}] step {step}: {text}", flush=True)

  def image(self, step: int, name: str, grid: np.ndarray) -> None:
    if self._tb is not None:
      self._tb.add_image(name, grid, step, dataformats="HWC")

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _progress(total: int, initial: int):
  from tqdm import tqdm

  return tqdm(
    total=total,
    initial=initial,
    disable=not sys.stderr.isatty() or jax.process_index() != 0,
    dynamic_ncols=True,
  )


def write_samples(vdm, params, config, workdir: str, step: int, writer=None) -> str | None:
  """Draws `config.train.num_samples` ancestral samples and writes a PNG grid; returns its path."""
  if config.train.num_samples <= 0 or len(vdm.data_shape) != 3:
    return None
  key = jax.random.fold_in(jax.random.key(config.seed), 1_000_003)
  if isinstance(vdm, VDM):
    draw = functools.partial(sampling.sample, vdm, num_steps=config.train.sample_steps)
  else:
    draw = vdm.sample
  images = jax.jit(lambda p, k: draw(p, k, config.train.num_samples))(params, key)
  grid = sampling.image_grid(jax.device_get(images), vdm.vocab_size, scale=4)
  path = os.path.join(workdir, f"samples_{step:08d}.png")
  if jax.process_index() == 0:
    sampling.save_png(path, grid)
    if writer is not None:
      writer.image(step, "samples", grid)
  return path


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.

  Returns:
    {"step": final step, "train": last logged train metrics, "eval": last eval result}.
  """
  config_lib.validate(config)
  if config.distributed:
    jax.distributed.initialize()
  workdir = check_workdir(workdir)
  check_batch_size(config.train.batch_size)
  check_batch_size(config.eval.batch_size, "config.eval.batch_size")
  if jax.process_index() == 0:  # builds the offline datasets once, not once per host
    data.prepare(config.data)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vdm_jax: data prepared")
  info = data.dataset_info(config.data)
  mesh = make_mesh()
  vdm = make_model(config, info)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  # State: shapes first, then allocate directly with replicated shardings.
  key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(key)
  replicated = NamedSharding(mesh, P())
  tx = make_optimizer(config)
  shapes = jax.eval_shape(lambda k: create_train_state(vdm, k, tx, config), init_key)
  state_sharding = replicated  # parameters, optimiser state and EMA on every device
  train_iter = data.make_train_iterator(
    config.data, global_batch_size=config.train.batch_size, seed=config.seed
  )
  manager = make_checkpoint_manager(workdir, config)
  latest = manager.latest_step()
  if latest is not None:
    state = restore_checkpoint(manager, latest, abstract_state(shapes, state_sharding), train_iter)
    print(f"Resumed from {workdir}/checkpoints at step {latest}.", flush=True)
  else:
    state = jax.jit(lambda k: create_train_state(vdm, k, tx, config), out_shardings=state_sharding)(
      init_key
    )
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(
    f"{info.name}: {info.shape} x V={info.vocab_size}; model {num_params:,} params; "
    f"{jax.device_count()} device(s) on {jax.process_count()} process(es).",
    flush=True,
  )

  step_fn = jit_train_step(vdm, config, mesh, state_sharding)
  writer = _Writer(workdir)
  step = int(state.step)
  total = config.train.num_steps
  pending, window_start, t0 = [], step, time.perf_counter()
  last_train, last_eval = {}, None
  progress = _progress(total, step)
  try:
    while step < total:
      batch = to_global(next(train_iter), mesh)
      state, metrics = step_fn(state, batch, step_key)
      step += 1
      pending.append(metrics)
      progress.update(1)

      saving = step % config.train.ckpt_every == 0 or step == total
      evaluating = step % config.train.eval_every == 0 or step == total
      # Metrics are fetched (and checked) before anything is saved, so no checkpoint
      # ever holds parameters from after a non-finite loss.
      if step % config.train.log_every == 0 or saving or evaluating:
        fetched = jax.device_get(pending)
        bad = [
          window_start + i + 1 for i, m in enumerate(fetched) if not np.isfinite(m["loss_bpd"])
        ]
        if bad:
          raise NonFiniteLossError(
            f"Loss became {fetched[bad[0] - window_start - 1]['loss_bpd']} at step {bad[0]} "
            f"(first non-finite step in {window_start + 1}..{step}); the last checkpoint "
            f"in {workdir}/checkpoints is before it. Lower config.optim.learning_rate or "
            "check the data."
          )
        elapsed = time.perf_counter() - t0
        last_train = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
        last_train["steps_per_sec"] = len(fetched) / elapsed
        writer.scalars(step, last_train, "train")
        pending, window_start, t0 = [], step, time.perf_counter()

      if saving:
        save_checkpoint(manager, step, state, train_iter)

      if evaluating:
        last_eval = evaluation.public(
          evaluation.evaluate(vdm, state.ema_params, config, mesh, split=config.eval.split)
        )
        writer.scalars(step, evaluation.scalar_summary(last_eval), "eval")
        write_samples(vdm, state.ema_params, config, workdir, step, writer)
        t0 = time.perf_counter()  # evaluation time is not training time
  finally:
    progress.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  result = {"step": step, "train": last_train, "eval": last_eval}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(result, f, indent=2, default=float)
  return result
