"""The training loop: `train_and_evaluate(config, workdir)`.

Checks everything before the work directory is touched, restores the newest intact
checkpoint (or initialises), trains with periodic logging, checkpoints, evaluation and
sample grids, stops cleanly on SIGTERM/SIGINT, and ends with the final evaluation.
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from vdm_jax import config as config_lib
from vdm_jax import data, models
from vdm_jax.evaluation import bpd, checkpoint_samples
from vdm_jax.runtime import checkpoints, distributed, storage
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.runtime import signals as _signals
from vdm_jax.runtime import workdir as workdir_lib
from vdm_jax.runtime.checkpoints import CheckpointError
from vdm_jax.training.metrics import MetricWriter, progress_bar, say
from vdm_jax.training.state import create_train_state, make_optimizer
from vdm_jax.training.step import jit_train_step

__all__ = [
  "USER_ERRORS",
  "CheckpointSaveError",
  "NonFiniteLossError",
  "NonFiniteStateError",
  "TrainingInterrupted",
  "check_workdir",
  "train_and_evaluate",
  "write_samples",
]


class NonFiniteLossError(RuntimeError):
  """Training met a non-finite loss or gradient norm; nothing after it was saved."""


class NonFiniteStateError(NonFiniteLossError):
  """The state to be saved, or the one restored, holds a NaN or an infinity."""


_ADVICE = (
  "Lower --config.optim.learning_rate or set --config.optim.grad_clip (both may change on "
  "resume), or check the data."
)


def _latest_checkpoint(manager, last_saved: int | None, step: int, made_it: bool) -> str:
  """Where a run that stopped at `step` stands: the latest checkpoint, which every save and
  restore has checked to be finite, and what a rerun does with it. `made_it`: that
  checkpoint's parameters themselves gave what went wrong at `step`."""
  directory = os.fspath(manager.directory)
  if last_saved is None:
    return f"no checkpoint had been saved yet ({directory}), so a rerun starts from step 0"
  if not made_it:
    return (
      f"the latest checkpoint, step {last_saved} ({directory}), holds finite values from "
      "before it (every checkpoint is checked), and a rerun resumes from it"
    )
  return (
    f"the latest checkpoint, step {last_saved} ({directory}), is finite but holds the "
    f"parameters that gave it, so a rerun resuming from it meets it again at step {step} "
    f"whatever the learning rate: {_way_back(manager, last_saved)}"
  )


def _way_back(manager, bad: int) -> str:
  """How to resume from before checkpoint `bad` (whose contents cannot be trained on)."""
  directory = os.fspath(manager.directory)
  older = sorted(s for s in manager.all_steps() if s < bad)
  if older:
    return (
      f"move {directory}/{bad} aside to resume from step {older[-1]}, the one before it, "
      "or start again in a new --workdir"
    )
  return "no earlier checkpoint is kept, so start again in a new --workdir"


class CheckpointSaveError(RuntimeError):
  """An asynchronous checkpoint save failed (disk full, permissions, ...)."""


class TrainingInterrupted(_signals.Stopped):
  """SIGTERM or SIGINT stopped training after saving a checkpoint at `step`.

  `when`: "step" (between steps), "eval" (during the periodic evaluation of `step`, which
  the next launch redoes first) or "final" (after the last step: the next launch runs the
  final evaluation and sample grid)."""

  def __init__(self, signum: int, step: int, workdir: str, when: str = "step"):
    self.step, self.when = step, when
    name = signal.Signals(signum).name
    saved = f"checkpoint {step} saved in {workdir}/checkpoints"
    message = {
      "step": f"Stopped by {name} after step {step}; {saved}. Run the same command again to "
      "resume.",
      "eval": f"Stopped by {name} during the evaluation of step {step}; {saved}. Run the same "
      f"command again: it evaluates step {step}, then resumes training.",
      "final": f"Stopped by {name} after the last step ({step}); {saved}. The final evaluation "
      "and sample grid will run on the next launch of the same command.",
    }[when]
    super().__init__(signum, message)


def check_workdir(workdir: str) -> str:
  """The resolved work directory (`storage.resolve`), once a probe file was written to it
  and removed again.

  Raises:
    ValueError: a file for a work directory, or one that cannot be written (on GCS: the
      bucket, the credentials or the emulator cannot be reached).
  """
  workdir = storage.resolve(workdir)
  if storage.is_remote(workdir):
    return _check_remote_workdir(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir!r} is a file; a work directory is a folder.")
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test_{jax.process_index()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"Work directory {workdir!r} is not writable: {e}") from e
  return workdir


def _check_remote_workdir(workdir: str) -> str:
  probe = storage.join(workdir, f".write_test_{jax.process_index()}")
  try:
    storage.write_atomic(probe, "ok")
    storage.remove(probe, missing_ok=True)
  except Exception as e:  # gcsfs, google-auth and aiohttp raise many kinds
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    where = (
      f"the GCS emulator at STORAGE_EMULATOR_HOST={emulator}"
      if emulator
      else "Google Cloud Storage (credentials: `gcloud auth application-default login`, or "
      "the VM's service account; for an emulator set STORAGE_EMULATOR_HOST)"
    )
    raise ValueError(
      f"Work directory {workdir!r} cannot be written through {where}: "
      f"{type(e).__name__}: {checkpoints.first_line(e)}. Check that the bucket exists and "
      "that this account may write to it."
    ) from e
  return workdir


class _StopSignals:
  """SIGTERM (how clusters and TPU VMs preempt) and SIGINT (Ctrl-C) request a clean stop.

  The handler only records the signal (`runtime.signals`: the CLI installs it before JAX
  is imported; without the CLI, this installs it for the whole of `train_and_evaluate`,
  main thread only, and restores the previous handlers after); the loop stops at its safe
  points. A second signal stops at once. With several processes, a signal received by any
  of them stops all at the same point (`requested` is a collective).
  """

  def __enter__(self):
    self._scope = _signals.scope()
    self._scope.__enter__()
    return self

  def __exit__(self, *exc):
    return self._scope.__exit__(*exc)

  def requested(self) -> int | None:
    """The signal number if any process received one, else None."""
    signum = _signals.received()
    if jax.process_count() == 1:
      return signum
    signums = multihost_utils.process_allgather(np.int32(signum or 0))
    return int(np.max(signums)) or None

  def check(self, where: str) -> None:
    """Raises `_signals.Stopped` ("Stopped by SIG... <where>.") if any process received one."""
    signum = self.requested()
    if signum is not None:
      raise _signals.Stopped(signum, f"Stopped by {signal.Signals(signum).name} {where}.")


def _read_final_metrics(workdir: str) -> dict | None:
  path = storage.join(workdir, "final_metrics.json")
  try:  # one written before strict JSON may hold NaN: None, as now
    return workdir_lib.to_strict_json(json.loads(storage.read_text(path)))
  except (OSError, ValueError):
    return None


def write_samples(model, params, config, mesh, workdir: str, step: int, writer=None) -> str | None:
  """Draws `config.train.num_samples` samples (split over the devices) and writes a PNG
  grid `samples_<step>.png`; returns its path (None for non-image data or no samples)."""
  if config.train.num_samples <= 0 or len(model.data_shape) != 3:
    return None
  key = jax.random.fold_in(jax.random.key(config.seed), 1_000_003)
  options = {"num_steps": config.train.sample_steps} if model.diffusion_time else {}
  samples = checkpoint_samples.draw_samples(
    model, params, key, config.train.num_samples, mesh, **options
  )
  path = storage.join(workdir, f"samples_{step:08d}.png")
  grid = checkpoint_samples.write_sample_grid(samples, model.vocab_size, path)
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
    {"step": final step, "train": last logged train metrics, "eval": final eval result},
    as `final_metrics.json` records it (strict JSON: a number that is not defined, such as
    the eval's `pass_se` of one pass, is None).
  """
  config_lib.validate(config)
  config_lib.check_training_batch(config)
  with _StopSignals() as stop:
    return _lock_and_train(config, workdir, stop)


def _lock_and_train(config, workdir: str, stop: _StopSignals) -> dict:
  distributed.initialize(None, None, None, auto=config.distributed)  # if not yet
  _signals.reassert()  # jax.distributed's preemption notifier takes SIGTERM over
  mesh_lib.check_batch_size(config.train.batch_size, micro_batches=config.train.grad_accum_steps)
  mesh_lib.check_batch_size(config.eval.batch_size, "config.eval.batch_size")
  stop.check("before training started; nothing was written")
  workdir = check_workdir(workdir)
  lock, error = None, ""
  if jax.process_index() == 0:
    try:
      lock = workdir_lib.lock(workdir).__enter__()
    except workdir_lib.WorkdirLockedError as e:
      error = str(e)
  if jax.process_count() > 1:
    locked = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
    error = error or ("work directory locked (see process 0)" if int(locked) else "")
  if error:
    raise workdir_lib.WorkdirLockedError(error)
  try:
    return _train(config, workdir, stop, lock)
  finally:
    if lock is not None:
      lock.__exit__(None, None, None)


def _train(config, workdir: str, stop: _StopSignals, lock=None) -> dict:
  distributed.prepare_data(config.data)
  info = data.dataset_info(config.data)
  mesh = mesh_lib.make_mesh()
  vdm = models.make_model(config, info)

  # State: shapes first, then allocate directly with their shardings.
  key = jax.random.key(config.seed)
  init_key, step_key = jax.random.split(key)
  replicated = mesh_lib.replicated(mesh)
  tx = make_optimizer(config)
  shapes = jax.eval_shape(lambda k: create_train_state(vdm, k, tx, config), init_key)
  state_sharding = mesh_lib.state_shardings(
    shapes, mesh, config.train.sharding, min_size=config.train.fsdp_min_size
  )
  manager = checkpoints.make_checkpoint_manager(workdir, max_to_keep=config.train.max_to_keep)
  try:
    changes = workdir_lib.check_resume_config(config, workdir, manager.latest_step())
    target = checkpoints.abstract_tree(shapes, state_sharding)
    state, restored_step = checkpoints.restore_latest_intact(manager, target)
  except Exception:
    manager.close()
    raise
  if state is not None:
    bad = checkpoints.non_finite_fields(checkpoints.saved_fields(state))
    if bad:
      message = (
        f"Checkpoint step {restored_step} in {workdir}/checkpoints holds non-finite values "
        f"(in {', '.join(bad)}; saved by a vdm_jax that did not check its saves): no "
        f"training can continue from it. To go on, {_way_back(manager, restored_step)}. " + _ADVICE
      )
      manager.close()
      raise NonFiniteStateError(message)
    say(f"Resumed from {workdir}/checkpoints at step {restored_step}.")
    for field, (old, new) in changes.items():
      say(f"  config.{field}: {old!r} -> {new!r}")
  else:
    state = jax.jit(lambda k: create_train_state(vdm, k, tx, config), out_shardings=state_sharding)(
      init_key
    )
  step = int(state.step)
  try:
    stop.check(
      f"before training started (at step {step}); nothing lost. Run the same command again "
      "to " + ("resume" if restored_step is not None else "start")
    )
  except _signals.Stopped:
    manager.close()
    raise
  train_iter = data.make_train_iterator(
    config.data, global_batch_size=config.train.batch_size, seed=config.seed, start_step=step
  )
  # Batch `step + i` is the i-th yielded: prefetching reads ahead, never skips or reorders.
  batches = mesh_lib.prefetch_to_mesh(train_iter, mesh, size=config.train.prefetch)
  if jax.process_index() == 0:
    workdir_lib.record_config(config, workdir, step)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  say(
    f"{info.name}: {info.shape} x V={info.vocab_size}; model {num_params:,} params; "
    f"{jax.device_count()} device(s) on {jax.process_count()} process(es)."
  )

  step_fn = jit_train_step(vdm, config, mesh, state_sharding)
  writer = MetricWriter(workdir, step)
  total = config.train.num_steps
  pending, window_start, t0 = [], step, time.perf_counter()
  last_train, last_saved = {}, restored_step
  progress = progress_bar(total, step)
  profiler = _Profiler(config, workdir)

  def save_finite(step, state):
    """Saves checkpoint `step`, which must be finite: an update can overflow while the loss
    and the gradient norm of its step are finite (one reduction: 2.2 ms on digits, 2 CPUs)."""
    nonlocal last_saved
    bad = checkpoints.non_finite_fields(checkpoints.saved_fields(state))
    if bad:
      where = _latest_checkpoint(manager, last_saved, step, made_it=False)
      raise NonFiniteStateError(
        f"Training diverged at step {step}: its loss and gradient norm were finite, "
        f"but the state after it holds non-finite values (in {', '.join(bad)}): an "
        f"update overflowed. Nothing was saved for step {step}; {where}. {_ADVICE}"
      )
    if lock is not None:
      lock.check()  # a gs:// lease lost to another run: write nothing more
    try:
      checkpoints.save_checkpoint(manager, step, state)
    except OSError as e:  # the synchronous part: the checksums, orbax's folders
      raise _save_failed(manager, step, e) from e
    last_saved = step

  def evaluate_periodically(step, state):
    """The evaluation and sample grid of `step`, recorded as pending until both are done;
    a signal during it saves checkpoint `step` and stops (the next launch redoes it)."""
    _write_pending_eval(workdir, step)
    notice = f"stopping the evaluation of step {step}, saving checkpoint {step}, then exiting"
    try:
      with _signals.notice(notice):
        ema = jax.device_put(state.ema_params, replicated)  # gathered if fsdp
        result = bpd.public(bpd.evaluate(vdm, ema, config, mesh, split=config.eval.split))
      _check_evaluation(result, ema, step, manager, last_saved, final=False)
      write_samples(vdm, ema, config, mesh, workdir, step, writer)
      writer.scalars(step, bpd.scalar_summary(result), "eval")
    except _signals.Stopped as e:
      if last_saved != step:
        save_finite(step, state)
      manager.wait_until_finished()
      _check_saves(manager, last_saved)
      raise TrainingInterrupted(e.signum, step, workdir, "eval") from None
    _clear_pending_eval(workdir)

  try:
    pending_eval = _pending_eval(workdir)
    if pending_eval is not None and pending_eval != step or step >= total:
      _clear_pending_eval(workdir)  # replayed (a later step), or done by the final evaluation
    if pending_eval == step and restored_step is not None and step < total:
      say(f"Evaluating step {step}, whose evaluation was cut off, before training on.")
      evaluate_periodically(step, state)
      t0 = time.perf_counter()
    with _signals.notice("finishing the current step, saving a checkpoint, then exiting"):
      while step < total:
        profiler.before(step + 1)
        state, metrics = step_fn(state, next(batches), step_key)
        step += 1
        profiler.after(step, state)
        pending.append(metrics)
        progress.update(1)
        _check_saves(manager, last_saved)

        signum = stop.requested()
        saving = step % config.train.ckpt_every == 0 or step == total or signum is not None
        evaluating = step % config.train.eval_every == 0 and step < total and signum is None
        # Metrics are fetched (and checked) before anything is saved, so no checkpoint
        # ever holds parameters from after a non-finite loss or gradient.
        if step % config.train.log_every == 0 or saving or evaluating:
          fetched = jax.device_get(pending)
          _check_metrics(fetched, window_start, step, manager, last_saved)
          elapsed = time.perf_counter() - t0
          last_train = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
          last_train["steps_per_sec"] = len(fetched) / elapsed
          writer.scalars(step, last_train, "train")
          pending, window_start, t0 = [], step, time.perf_counter()

        if saving:
          save_finite(step, state)

        if signum is not None:
          manager.wait_until_finished()
          _check_saves(manager, last_saved)
          raise TrainingInterrupted(signum, step, workdir)

        if evaluating:
          evaluate_periodically(step, state)
          t0 = time.perf_counter()  # evaluation time is not training time
    progress.close()
    # After the last step a signal waits for the final save, then skips the evaluation.
    with _signals.notice(
      "waiting for the final checkpoint to be written, then exiting; the final evaluation "
      "will run on the next launch"
    ):
      manager.wait_until_finished()
    _check_saves(manager, last_saved)

    # The final evaluation: done once per finished run (a rerun does it if it was cut off).
    previous = _read_final_metrics(workdir)
    if previous and previous.get("step") == step and previous.get("eval") is not None:
      say(f"Training finished at step {step}; final evaluation already in final_metrics.json.")
      return previous
    if not last_train and previous and previous.get("step") == step:
      last_train = previous.get("train") or {}
    # The train section first: it survives whatever cuts the evaluation off.
    _write_final_metrics(workdir, step, last_train, None)
    signum = stop.requested()
    if signum is not None:
      raise TrainingInterrupted(signum, step, workdir, "final")
    try:
      ema = jax.device_put(state.ema_params, replicated)
      last_eval = bpd.public(bpd.evaluate(vdm, ema, config, mesh, split=config.eval.split))
    except _signals.Stopped as e:  # between two evaluation batches (one process)
      raise TrainingInterrupted(e.signum, step, workdir, "final") from None
    _check_evaluation(last_eval, ema, step, manager, last_saved, final=True)
    write_samples(vdm, ema, config, mesh, workdir, step, writer)
    writer.scalars(step, bpd.scalar_summary(last_eval), "eval")
  except Exception as e:
    # Several processes: another one stopped. End now; the cleanup below would wait for it
    # (an asynchronous save's commit waits for every process).
    distributed.exit_if_lost_peer(e)
    raise
  finally:
    profiler.stop()
    progress.close()
    manager.wait_until_finished()
    manager.close()
    writer.close()
  return _write_final_metrics(workdir, step, last_train, last_eval)


def _write_final_metrics(workdir: str, step: int, train: dict, evaluation: dict | None) -> dict:
  """Writes `final_metrics.json` atomically (process 0); returns it as written (strict JSON:
  a non-finite number, e.g. pass_se of one pass, is None, so that this run and a rerun that
  returns the recorded file return the same dict). `evaluation` None: not done yet."""
  result = workdir_lib.to_strict_json({"step": step, "train": train, "eval": evaluation})
  if jax.process_index() == 0:
    workdir_lib.write_json_atomic(
      storage.join(workdir, "final_metrics.json"), workdir_lib.dumps_strict(result, indent=2)
    )
  return result


_PENDING_EVAL = "eval_pending.json"


def _pending_eval(workdir: str) -> int | None:
  """The step whose periodic evaluation started but did not complete (process 0's reading,
  shared with all processes), or None."""
  step = 0
  if jax.process_index() == 0:
    try:
      step = int(json.loads(storage.read_text(storage.join(workdir, _PENDING_EVAL)))["step"])
    except (OSError, ValueError, KeyError, TypeError):
      step = 0
  if jax.process_count() > 1:
    step = int(multihost_utils.broadcast_one_to_all(np.int32(step)))
  return step or None


def _write_pending_eval(workdir: str, step: int) -> None:
  if jax.process_index() == 0:
    path = storage.join(workdir, _PENDING_EVAL)
    workdir_lib.write_json_atomic(path, json.dumps({"step": step}))


def _clear_pending_eval(workdir: str) -> None:
  if jax.process_index() == 0:
    storage.remove(storage.join(workdir, _PENDING_EVAL), missing_ok=True)


USER_ERRORS = (
  ValueError,
  FileNotFoundError,
  workdir_lib.WorkdirLockedError,
  CheckpointError,
  CheckpointSaveError,
  NonFiniteLossError,
)
"""Errors whose message says what is wrong and what to do (the CLI prints them alone)."""


class _Profiler:
  """`jax.profiler` trace of the steps a..b of `config.train.profile_steps` into
  `<workdir>/profile`, on process 0. A run resumed inside the window traces the rest of it.
  With a `gs://` work directory the profiler writes to a local temporary folder, whose files
  are uploaded to `<workdir>/profile/` when the trace ends."""

  def __init__(self, config, workdir: str):
    window = config_lib.profile_steps(config)
    self.window = window if jax.process_index() == 0 else None
    self.directory = storage.join(workdir, "profile")
    self.active = False
    self._local = None

  def before(self, step: int) -> None:
    """Called before running step `step` (the step that makes state.step == step)."""
    if self.window and not self.active and self.window[0] <= step <= self.window[1]:
      if storage.is_remote(self.directory):
        import tempfile

        self._local = tempfile.mkdtemp(prefix="vdm_jax_profile_")
      jax.profiler.start_trace(self._local or self.directory)
      self.active = True

  def after(self, step: int, state) -> None:
    if self.active and step >= self.window[1]:
      jax.block_until_ready(state)
      self.stop()
      say(f"Profile of steps {self.window[0]}..{step} written to {self.directory}.")

  def stop(self) -> None:
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
      if self._local is not None:
        import shutil

        for folder, _, files in os.walk(self._local):
          for name in files:
            local = os.path.join(folder, name)
            relative = os.path.relpath(local, self._local).replace(os.sep, "/")
            with open(local, "rb") as f:
              storage.write_atomic(storage.join(self.directory, relative), f.read())
        shutil.rmtree(self._local, ignore_errors=True)
        self._local = None


def _check_metrics(fetched: list, window_start: int, step: int, manager, last_saved) -> None:
  """Raises `NonFiniteLossError` at the first of steps window_start + 1..step whose loss or
  gradient norm is NaN or infinite."""
  for i, m in enumerate(fetched):
    name = next((k for k in ("loss_bpd", "grad_norm") if not np.isfinite(m[k])), None)
    if name is None:
      continue
    bad = window_start + i + 1
    what = "Loss" if name == "loss_bpd" else "Gradient norm"
    # The loss of step `bad` is computed from the parameters after step bad - 1.
    where = _latest_checkpoint(manager, last_saved, bad, made_it=last_saved == bad - 1)
    raise NonFiniteLossError(
      f"{what} became {m[name]} at step {bad} (first non-finite step in "
      f"{window_start + 1}..{step}); nothing after step {bad - 1} was saved: {where}. {_ADVICE}"
    )


def _check_evaluation(result, ema, step: int, manager, last_saved, *, final: bool) -> None:
  """Raises `bpd.NonFiniteEvaluationError` if the evaluation at `step` is not finite."""
  kind = "The final evaluation" if final else "The evaluation"
  if last_saved == step:
    where = f"Checkpoint step {step} holds these parameters; to go on, {_way_back(manager, step)}"
  else:
    where = _latest_checkpoint(manager, last_saved, step, made_it=False)
    where = where[0].upper() + where[1:]
  written = (
    "The run's final_metrics.json holds the train section only (eval null)"
    if final
    else "It was not recorded"
  )
  bpd.check_finite(
    result,
    ema,
    f"{kind} at step {step} ({result['split']} split)",
    f"{written}. {where}. {_ADVICE}",
  )


def _check_saves(manager, step: int | None) -> None:
  """Raises `CheckpointSaveError` if an asynchronous save has failed."""
  try:
    manager.check_for_errors()
  except Exception as e:
    raise _save_failed(manager, step, e) from e


def _save_failed(manager, step: int | None, error: BaseException) -> CheckpointSaveError:
  """The one-paragraph error of a failed save of `step`, naming the checkpoint a rerun
  resumes from (the newest one before it)."""
  try:
    manager.wait_until_finished()  # the save before it may still be being written
  except Exception:  # it failed too: the listing below leaves it out
    pass
  try:
    manager.reload()
    older = [s for s in manager.all_steps() if step is None or s < step]
  except Exception:  # the listing fails too (the storage is gone): say nothing of it
    older = []
  where = (
    f"the latest saved checkpoint is step {max(older)}, and a rerun resumes from it"
    if older
    else "no earlier checkpoint is saved, so a rerun starts from step 0"
  )
  return CheckpointSaveError(
    f"Saving checkpoint step {step} to {os.fspath(manager.directory)} failed: "
    f"{type(error).__name__}: {checkpoints.first_line(error)}. Training stopped; {where}. "
    "Check free disk space and permissions."
  )
