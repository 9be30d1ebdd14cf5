"""Training: train state with EMA, sharded pure steps, orbax resume, the loop.

One readable trainer, top to bottom:

  1. Train state and optimiser (optax AdamW, warm-up, clipping, masked weight decay, EMA).
  2. Mesh and shardings (a 1-D ("data",) mesh of every device of every host).
  3. Pure steps: `train_step(state, batch, key)` and `eval_step(params, batch, key)`.
  4. Checkpoints (orbax CheckpointManager: the train state, async; the data position is the
     step; checksums; fallback to the newest intact step).
  5. The loop `train_and_evaluate(config, workdir)`.

The steps are not wrapped in `lax.scan`: on XLA:CPU a convolution's weight gradient
inside a scan is ~40x slower (DESIGN §4).
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import threading
import time
import zlib
from typing import Any

import flax
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

from vdm_jax import _cli, data, elbo, evaluation, sampling
from vdm_jax import config as config_lib
from vdm_jax import workdir as workdir_lib
from vdm_jax.evaluation import to_global
from vdm_jax.vdm import VDM, make_model

__all__ = [
  "CheckpointError",
  "CheckpointSaveError",
  "NonFiniteLossError",
  "TrainState",
  "TrainingInterrupted",
  "USER_ERRORS",
  "abstract_state",
  "check_batch_size",
  "check_workdir",
  "checksums",
  "create_train_state",
  "jit_train_step",
  "learning_rate_schedule",
  "load_ema_params",
  "make_checkpoint_manager",
  "make_mesh",
  "make_optimizer",
  "num_time_bins",
  "restore_checkpoint",
  "restore_latest_intact",
  "save_checkpoint",
  "state_shardings",
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


def state_shardings(state_shapes, mesh, kind: str = "replicated", *, min_size: int = 2**14):
  """Shardings of the train state over the mesh's "data" axis.

  "replicated": every array on every device (data parallelism). "fsdp" (fully sharded
  data parallelism): each array of at least `min_size` elements is split along its
  largest axis that the device count divides (params, both Adam moments and the EMA
  alike); smaller ones (whose gathers would cost more than the memory they save), and
  those with no such axis, stay replicated. XLA then gathers
  the params where the step needs them and reduce-scatters the gradients, so the
  per-device memory of the state falls about N-fold for N devices.

  Args:
    state_shapes: a TrainState (or any pytree) of arrays or ShapeDtypeStructs.
    mesh: a mesh with a "data" axis.
    kind: "replicated" or "fsdp".
    min_size: the smallest array "fsdp" splits (`config.train.fsdp_min_size`).

  Returns:
    a pytree of `NamedSharding`s with the structure of `state_shapes`.
  """
  replicated = NamedSharding(mesh, P())
  if kind == "replicated":
    return jax.tree.map(lambda _: replicated, state_shapes)
  if kind != "fsdp":
    raise ValueError(f"Unknown sharding {kind!r}; choose 'replicated' or 'fsdp'.")
  n = mesh.shape["data"]

  def leaf(x):
    if x.size < min_size:
      return replicated
    for axis in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
      if x.shape[axis] % n == 0:
        spec = [None] * x.ndim
        spec[axis] = "data"
        return NamedSharding(mesh, P(*spec))
    return replicated

  return jax.tree.map(leaf, state_shapes)


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
  """ShapeDtypeStructs carrying shardings of the current mesh: an orbax restore target.

  `sharding` is one sharding for every array, or a pytree of them (`state_shardings`).
  """
  if isinstance(sharding, jax.sharding.Sharding):
    sharding = jax.tree.map(lambda _: sharding, state_shapes)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_shapes, sharding
  )


def _saved_fields(state) -> dict:
  """The train state's array fields as a dict, leaving out those that are None.

  Checkpoints hold this dict, so a field used only by some configs (`time_moments`, with
  importance sampling of t) is absent from the others' checkpoints instead of a None that
  would make older checkpoints unreadable.
  """
  names = ("step", "params", "opt_state", "ema_params", "time_moments")
  return {n: getattr(state, n) for n in names if getattr(state, n) is not None}


def _checksum_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "checksums", f"{step}.json")


def _host_array(x) -> np.ndarray:
  """The whole of a (possibly sharded, possibly multi-process) array, as numpy."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))  # every process calls


def checksums(tree) -> dict:
  """{leaf path: "crc32:dtype:shape"} of a pytree of arrays, for integrity checks.

  Call on every process (a sharded array spread over processes is gathered collectively).
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = _host_array(leaf)
    crc = zlib.crc32(np.ascontiguousarray(array).tobytes())
    out[jax.tree_util.keystr(path)] = f"{crc:08x}:{array.dtype}:{array.shape}"
  return out


def save_checkpoint(manager, step: int, state, *, force: bool = False) -> None:
  """Saves the state at `step` (asynchronously), and, first, the checksum of every array
  beside it (`<workdir>/checksums/<step>.json`, process 0).

  The data position needs no saving: it is the step (`data.make_train_iterator(...,
  start_step=step)`), the same whatever the number of processes that resume it.
  """
  fields = _saved_fields(state)
  sums = checksums(fields)
  if jax.process_index() == 0:
    workdir = os.path.dirname(os.path.abspath(os.fspath(manager.directory)))
    path = _checksum_path(workdir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    workdir_lib.write_json_atomic(path, json.dumps(sums, indent=0))
    kept = manager.all_steps()  # those of steps orbax has deleted (max_to_keep) go too
    for name in os.listdir(os.path.dirname(path)):
      old = name.removesuffix(".json")
      if old.isdigit() and kept and int(old) < min(kept):
        os.remove(os.path.join(os.path.dirname(path), name))
  manager.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(fields)),
    force=force,
  )


def restore_checkpoint(manager, step: int, target):
  """Restores the train state into `target`'s shardings (any process or device count).

  `target` is a TrainState of ShapeDtypeStructs (`abstract_state`); returns a TrainState.
  Raises `CheckpointError` naming the step if the files are damaged (unreadable, or an
  array whose checksum differs from the one recorded when it was saved).
  """
  # Checkpoints of earlier versions also hold a per-process "data" item; it is not read.
  items = {"state": ocp.args.StandardRestore(_saved_fields(target))}
  directory = os.fspath(manager.directory)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))["state"]
  except Exception as e:  # orbax/tensorstore raise many kinds; all mean "cannot read"
    raise CheckpointError(
      f"Checkpoint step {step} in {directory} cannot be read: {type(e).__name__}: {_first_line(e)}"
    ) from e
  path = _checksum_path(os.path.dirname(os.path.abspath(directory)), step)
  if os.path.exists(path):
    with open(path) as f:
      expected = json.load(f)
    actual = checksums(restored)
    bad = [k for k in actual if expected.get(k) != actual[k]]
    if bad:
      raise CheckpointError(
        f"Checkpoint step {step} in {directory} is damaged: {len(bad)} array(s) differ from "
        f"the checksums recorded when it was saved ({path}), e.g. {bad[0]}."
      )
  else:
    logging.warning("Checkpoint step %d has no recorded checksums; not verified.", step)
  return target.replace(**restored)


class CheckpointError(RuntimeError):
  """A checkpoint step that cannot be restored as saved."""


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else ""


def restore_latest_intact(manager, target):
  """Restores the newest checkpoint that is intact; damaged newer steps are moved aside.

  A damaged step (see `restore_checkpoint`) is reported and the next older one tried; once
  one restores, the damaged newer steps are moved to `<workdir>/checkpoints_damaged/` (kept
  for inspection, no longer seen by orbax) so that training can write those steps again.
  If no step restores, nothing is moved and `CheckpointError` lists every step's problem
  (e.g. a model config that differs from the checkpoints').

  Returns:
    (state, step), or (None, None) when there is no checkpoint.
  """
  problems = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = restore_checkpoint(manager, step, target)
    except CheckpointError as e:
      logging.warning("%s", e)
      print(f"WARNING: {e} Trying the previous checkpoint.", file=sys.stderr, flush=True)
      problems.append((step, str(e)))
      continue
    if problems:
      _quarantine(manager, [s for s, _ in problems])
      print(
        f"Resuming from step {step}, the newest intact checkpoint; damaged step(s) "
        f"{[s for s, _ in problems]} moved to checkpoints_damaged/.",
        file=sys.stderr,
        flush=True,
      )
    return state, step
  if problems:
    listing = "\n".join(f"  step {s}: {p}" for s, p in problems)
    raise CheckpointError(
      f"No checkpoint in {os.fspath(manager.directory)} could be restored:\n{listing}\n"
      "If the config's model differs from the one these checkpoints were trained with, "
      "use the original config or a new --workdir."
    )
  return None, None


def _quarantine(manager, steps) -> None:
  directory = os.fspath(manager.directory)
  if jax.process_index() == 0:
    damaged = os.path.join(os.path.dirname(os.path.abspath(directory)), "checkpoints_damaged")
    os.makedirs(damaged, exist_ok=True)
    for step in steps:
      source = os.path.join(directory, str(step))
      if os.path.exists(source):
        target, n = os.path.join(damaged, str(step)), 1
        while os.path.exists(target):
          target, n = os.path.join(damaged, f"{step}.{n}"), n + 1
        os.replace(source, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vdm_jax: damaged checkpoints moved")
  manager.reload()


def load_ema_params(config, workdir: str, *, step: int | None = None):
  """Restores a checkpoint's EMA params, replicated over the current devices.

  Works whatever device count trained it: the restore target carries this process's mesh.
  The arrays are verified against the checksums recorded at save time.

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
    target = abstract_state(shapes, NamedSharding(mesh, P()))
    try:
      state = restore_checkpoint(manager, step, target)
    except CheckpointError as e:
      older = sorted(s for s in steps if s < step)
      hint = f" Choose an older one with --step={older[-1]}." if older else ""
      raise CheckpointError(
        f"{e}{hint} (If the config's model differs from the training run's, pass the "
        f"training config: {os.path.join(workdir, 'config.json')} records it.)"
      ) from e
  return vdm, mesh, state.ema_params, step


# ---------------------------------------------------------------------------
# 5. The loop.
# ---------------------------------------------------------------------------


class NonFiniteLossError(RuntimeError):
  pass


class CheckpointSaveError(RuntimeError):
  """An asynchronous checkpoint save failed (disk full, permissions, ...)."""


class TrainingInterrupted(Exception):
  """SIGTERM or SIGINT stopped training after saving a checkpoint at `step`."""

  def __init__(self, signum: int, step: int, workdir: str):
    self.signum, self.step = signum, step
    super().__init__(
      f"Stopped by {signal.Signals(signum).name} after step {step}; checkpoint {step} saved "
      f"in {workdir}/checkpoints. Run the same command again to resume."
    )


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
  """Scalars to TensorBoard event files, `metrics.jsonl` and stdout; only process 0 writes.

  Both files are flushed at every write, so a kill loses nothing already logged. A resumed
  run first drops the rows logged after its checkpoint (`start_step`), which it replays:
  from `metrics.jsonl` directly, and from TensorBoard through its purge step.
  """

  def __init__(self, workdir: str, start_step: int):
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      self._jsonl = os.path.join(workdir, "metrics.jsonl")
      dropped = workdir_lib.drop_replayed_rows(self._jsonl, start_step)
      if dropped:
        print(f"metrics.jsonl: dropped {dropped} row(s) after step {start_step} (replayed).")
      from vdm_jax import _deps

      if _deps.available("tensorboardX"):  # the optional `tensorboard` extra
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(
          os.path.join(workdir, "tb"), purge_step=start_step + 1 if start_step else None
        )
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
    if self._tb is not None:
      self._tb.flush()
    with open(self._jsonl, "a") as f:
      f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
    text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    logging.info("[%s] step %d: %s", kind, step, text)
    print(f"[{kind}] step {step}: {text}", flush=True)

  def image(self, step: int, name: str, grid: np.ndarray) -> None:
    if self._tb is not None:
      self._tb.add_image(name, grid, step, dataformats="HWC")
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


class _StopSignals:
  """SIGTERM (how clusters and TPU VMs preempt) and SIGINT (Ctrl-C) request a clean stop.

  The handler only records the signal; the loop finishes its step, saves and exits. A
  second signal interrupts at once (KeyboardInterrupt). With several processes, a signal
  received by any of them stops all at the same step (`requested` is a collective).
  Handlers are installed only in the main thread, and restored on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signum is not None:
      raise KeyboardInterrupt
    self.signum = signum
    print(
      f"\n{signal.Signals(signum).name} received: finishing the current step, saving a "
      "checkpoint, then exiting (send it again to stop at once).",
      file=sys.stderr,
      flush=True,
    )

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def requested(self) -> int | None:
    """The signal number if any process received one, else None."""
    if jax.process_count() == 1:
      return self.signum
    signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
    return int(np.max(signums)) or None


def _say(message: str) -> None:
  """Progress messages: printed by process 0 only (warnings and errors by every process)."""
  if jax.process_index() == 0:
    print(message, flush=True)


def _read_final_metrics(workdir: str) -> dict | None:
  path = os.path.join(workdir, "final_metrics.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


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

  Everything is checked before the work directory is touched (the config, the devices,
  the data, a concurrent run, a resume with a config that changes what the checkpoints
  mean); the config is recorded only once the state is restored. SIGTERM/SIGINT save a
  checkpoint and raise `TrainingInterrupted`. A run ends with its final evaluation and
  sample grid (`final_metrics.json`); a rerun of a finished run whose final evaluation
  did not complete performs it, and one whose evaluation is recorded returns it.

  Returns:
    {"step": final step, "train": last logged train metrics, "eval": final eval result}.
  """
  config_lib.validate(config)
  _cli.initialize_distributed(None, None, None, auto=config.distributed)  # if not yet
  check_batch_size(config.train.batch_size)
  check_batch_size(config.eval.batch_size, "config.eval.batch_size")
  workdir = check_workdir(workdir)
  lock, error = None, ""
  if jax.process_index() == 0:
    try:
      lock = workdir_lib.RunLock(workdir).__enter__()
    except workdir_lib.WorkdirLockedError as e:
      error = str(e)
  if jax.process_count() > 1:
    locked = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
    error = error or ("work directory locked (see process 0)" if int(locked) else "")
  if error:
    raise workdir_lib.WorkdirLockedError(error)
  try:
    return _train(config, workdir)
  finally:
    if lock is not None:
      lock.__exit__(None, None, None)


def _train(config, workdir: str) -> dict:
  # Process 0 builds the offline datasets first; then the others, which find them ready
  # on a shared data_dir or build their own copy on a host-local one (prepare is
  # idempotent; for the public datasets it checks that this host has the files).
  if jax.process_index() == 0:
    data.prepare(config.data)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vdm_jax: data prepared on process 0")
    if jax.process_index() != 0:
      data.prepare(config.data)
    multihost_utils.sync_global_devices("vdm_jax: data prepared")
  info = data.dataset_info(config.data)
  mesh = make_mesh()
  vdm = make_model(config, info)

  # State: shapes first, then allocate directly with their shardings.
  key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(key)
  replicated = NamedSharding(mesh, P())
  tx = make_optimizer(config)
  shapes = jax.eval_shape(lambda k: create_train_state(vdm, k, tx, config), init_key)
  state_sharding = state_shardings(
    shapes, mesh, config.train.sharding, min_size=config.train.fsdp_min_size
  )
  manager = make_checkpoint_manager(workdir, config)
  try:
    changes = workdir_lib.check_resume_config(config, workdir, manager.latest_step())
    state, restored_step = restore_latest_intact(manager, abstract_state(shapes, state_sharding))
  except Exception:
    manager.close()
    raise
  if state is not None:
    _say(f"Resumed from {workdir}/checkpoints at step {restored_step}.")
    for field, (old, new) in changes.items():
      _say(f"  config.{field}: {old!r} -> {new!r}")
  else:
    state = jax.jit(lambda k: create_train_state(vdm, k, tx, config), out_shardings=state_sharding)(
      init_key
    )
  step = int(state.step)
  train_iter = data.make_train_iterator(
    config.data, global_batch_size=config.train.batch_size, seed=config.seed, start_step=step
  )
  if jax.process_index() == 0:
    workdir_lib.record_config(config, workdir, step)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  _say(
    f"{info.name}: {info.shape} x V={info.vocab_size}; model {num_params:,} params; "
    f"{jax.device_count()} device(s) on {jax.process_count()} process(es)."
  )

  step_fn = jit_train_step(vdm, config, mesh, state_sharding)
  writer = _Writer(workdir, step)
  total = config.train.num_steps
  pending, window_start, t0 = [], step, time.perf_counter()
  last_train, last_saved = {}, restored_step
  progress = _progress(total, step)
  try:
    with _StopSignals() as stop:
      while step < total:
        batch = to_global(next(train_iter), mesh)
        state, metrics = step_fn(state, batch, step_key)
        step += 1
        pending.append(metrics)
        progress.update(1)
        _check_saves(manager, last_saved)

        signum = stop.requested()
        saving = step % config.train.ckpt_every == 0 or step == total or signum is not None
        evaluating = step % config.train.eval_every == 0 and step < total and signum is None
        # Metrics are fetched (and checked) before anything is saved, so no checkpoint
        # ever holds parameters from after a non-finite loss.
        if step % config.train.log_every == 0 or saving or evaluating:
          fetched = jax.device_get(pending)
          bad = [
            window_start + i + 1 for i, m in enumerate(fetched) if not np.isfinite(m["loss_bpd"])
          ]
          if bad:
            where = (
              f"the latest checkpoint, step {last_saved}, is before it"
              if last_saved is not None
              else "no checkpoint had been saved yet"
            )
            raise NonFiniteLossError(
              f"Loss became {fetched[bad[0] - window_start - 1]['loss_bpd']} at step {bad[0]} "
              f"(first non-finite step in {window_start + 1}..{step}); {where} "
              f"({workdir}/checkpoints). Lower config.optim.learning_rate or check the data."
            )
          elapsed = time.perf_counter() - t0
          last_train = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
          last_train["steps_per_sec"] = len(fetched) / elapsed
          writer.scalars(step, last_train, "train")
          pending, window_start, t0 = [], step, time.perf_counter()

        if saving:
          save_checkpoint(manager, step, state)
          last_saved = step

        if signum is not None:
          manager.wait_until_finished()
          _check_saves(manager, last_saved)
          raise TrainingInterrupted(signum, step, workdir)

        if evaluating:
          ema = jax.device_put(state.ema_params, replicated)  # gathered if fsdp
          result = evaluation.public(
            evaluation.evaluate(vdm, ema, config, mesh, split=config.eval.split)
          )
          writer.scalars(step, evaluation.scalar_summary(result), "eval")
          write_samples(vdm, ema, config, workdir, step, writer)
          del ema
          t0 = time.perf_counter()  # evaluation time is not training time
    progress.close()
    manager.wait_until_finished()
    _check_saves(manager, last_saved)

    # The final evaluation: done once per finished run (a rerun does it if it was cut off).
    previous = _read_final_metrics(workdir)
    if previous and previous.get("step") == step and previous.get("eval") is not None:
      _say(f"Training finished at step {step}; final evaluation already in final_metrics.json.")
      return previous
    ema = jax.device_put(state.ema_params, replicated)
    last_eval = evaluation.public(
      evaluation.evaluate(vdm, ema, config, mesh, split=config.eval.split)
    )
    writer.scalars(step, evaluation.scalar_summary(last_eval), "eval")
    write_samples(vdm, ema, config, workdir, step, writer)
  finally:
    progress.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  if not last_train and previous and previous.get("step") == step:
    last_train = previous.get("train") or {}
  result = {"step": step, "train": last_train, "eval": last_eval}
  if jax.process_index() == 0:
    workdir_lib.write_json_atomic(
      os.path.join(workdir, "final_metrics.json"), json.dumps(result, indent=2, default=float)
    )
  return result


USER_ERRORS = (
  ValueError,
  FileNotFoundError,
  workdir_lib.WorkdirLockedError,
  CheckpointError,
  CheckpointSaveError,
  NonFiniteLossError,
)
"""Errors whose message says what is wrong and what to do (the CLI prints them alone)."""


def _check_saves(manager, step: int | None) -> None:
  """Raises `CheckpointSaveError` if an asynchronous save has failed."""
  try:
    manager.check_for_errors()
  except Exception as e:
    raise CheckpointSaveError(
      f"Saving checkpoint step {step} to {os.fspath(manager.directory)} failed: "
      f"{type(e).__name__}: {_first_line(e)}. Check free disk space and permissions; "
      "older checkpoints are intact and a rerun resumes from the newest of them."
    ) from e
