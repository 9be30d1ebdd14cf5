"""The training loop: `train_and_evaluate(config, workdir)`.

Checks everything before the work directory is touched, restores the newest intact
checkpoint (or initialises), trains with periodic logging, checkpoints, evaluation and
sample grids, stops cleanly on SIGTERM/SIGINT, and ends with the final evaluation.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from vdm_jax import config as config_lib
from vdm_jax import data, models, streams
from vdm_jax._errors import USER_ERRORS, UserError
from vdm_jax.evaluation import bpd, checkpoint_samples
from vdm_jax.runtime import checkpoints, distributed, storage
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.runtime import signals as _signals
from vdm_jax.runtime import workdir as workdir_lib
from vdm_jax.training.metrics import MetricWriter, progress_bar, say
from vdm_jax.training.saver import CheckpointSaveError, Saver
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


class NonFiniteLossError(UserError, RuntimeError):
  """Training met a non-finite loss or gradient norm; nothing after it was saved."""


class NonFiniteStateError(NonFiniteLossError):
  """The state to be saved, or the one restored, holds a NaN or an infinity."""


_ADVICE = (
  "Lower --config.optim.learning_rate or set --config.optim.grad_clip (both may change on "
  "resume), or check the data."
)


def _latest_checkpoint(saver, step: int, made_it: bool) -> str:
  """Where a run that stopped at `step` stands: the latest checkpoint (`saver.last_saved`),
  which every save and restore has checked to be finite, and what a rerun does with it.
  `made_it`: that checkpoint's parameters themselves gave what went wrong at `step`."""
  manager, last_saved = saver.manager, saver.last_saved
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


def _check_workdir_path(workdir: str) -> None:
  """The checks of `check_workdir` that write nothing (a local path only): run before the
  data is prepared, so a mistaken --workdir leaves no prepared dataset behind either."""
  path = storage.resolve(workdir)
  if storage.is_remote(path):
    return
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--workdir {path!r} is a file; a work directory is a folder.")
  parent = path
  while not os.path.exists(parent) and os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(
      f"Work directory {path!r} is not writable: it cannot be created, {parent!r} is a file."
    )


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
  key = streams.sample_grid_key(config.seed)
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
    return _train(config, workdir, stop)


def _train(config, workdir: str, stop: _StopSignals) -> dict:
  """The run from top to bottom; every resource is released by the ExitStack, innermost
  first (a lost peer ends the process before the saver would wait for it)."""
  _check_workdir_path(workdir)
  info = _check_inputs(config, stop)  # nothing is written before this returns
  workdir = check_workdir(workdir)
  with contextlib.ExitStack() as stack:
    lock = stack.enter_context(_run_lock(workdir))
    model, mesh = models.make_model(config, info), mesh_lib.make_mesh()
    manager = checkpoints.make_checkpoint_manager(workdir, max_to_keep=config.train.max_to_keep)
    saver = stack.enter_context(Saver(manager, lock=lock))
    stack.enter_context(_exit_if_lost_peer())
    state, sharding, saver.last_saved = _init_or_restore(config, workdir, model, mesh, manager)
    run = _Run(config, workdir, model, mesh, stop, saver, state)
    stop.check(
      f"before training started (at step {run.step}); nothing lost. Run the same command "
      "again to " + ("resume" if run.restored_step is not None else "start")
    )
    batches = _batches(config, mesh, run.step)
    if jax.process_index() == 0:
      workdir_lib.record_config(config, workdir, run.step)
    _say_sizes(info, state)
    run.writer = stack.enter_context(contextlib.closing(MetricWriter(workdir, run.step)))
    run.progress = stack.enter_context(
      contextlib.closing(progress_bar(config.train.num_steps, run.step))
    )
    run.profiler = _Profiler(config, workdir)
    stack.callback(run.profiler.stop)
    run.step_fn = jit_train_step(model, config, mesh, sharding)
    run.redo_cut_off_evaluation()
    with _signals.notice("finishing the current step, saving a checkpoint, then exiting"):
      while run.step < config.train.num_steps:
        run.train_step(next(batches))
        run.after_step()
    run.wait_for_last_save()
    return run.final_evaluation()


def _check_inputs(config, stop: _StopSignals):
  """What is checked before anything is written: the processes (started if not yet), the
  batch sizes over the devices, and the data (offline datasets are prepared in data_dir);
  returns the dataset's `DatasetInfo`."""
  distributed.initialize(None, None, None, auto=config.distributed)  # if not yet
  _signals.reassert()  # jax.distributed's preemption notifier takes SIGTERM over
  mesh_lib.check_batch_size(config.train.batch_size, micro_batches=config.train.grad_accum_steps)
  mesh_lib.check_batch_size(config.eval.batch_size, "config.eval.batch_size")
  stop.check("before training started; nothing was written")
  distributed.prepare_data(config.data)
  info = data.dataset_info(config.data)
  stop.check("before training started; nothing was written")
  return info


@contextlib.contextmanager
def _run_lock(workdir: str):
  """The work directory's run lock, held by process 0 (None on the others) for the block;
  every process raises `WorkdirLockedError` if another run holds it."""
  with contextlib.ExitStack() as stack:
    lock, error = None, ""
    if jax.process_index() == 0:
      try:
        lock = stack.enter_context(workdir_lib.lock(workdir))
      except workdir_lib.WorkdirLockedError as e:
        error = str(e)
    if jax.process_count() > 1:
      locked = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
      error = error or ("work directory locked (see process 0)" if int(locked) else "")
    if error:
      raise workdir_lib.WorkdirLockedError(error)
    yield lock


@contextlib.contextmanager
def _exit_if_lost_peer():
  """Several processes: an error that means another one stopped ends this one at once; the
  cleanup would wait for it (an asynchronous save's commit waits for every process)."""
  try:
    yield
  except Exception as e:
    distributed.exit_if_lost_peer(e)
    raise


def _init_or_restore(config, workdir: str, model, mesh, manager):
  """The train state: the newest intact checkpoint, restored into the state's shardings,
  or a new one (shapes first, then allocated with their shardings).

  Returns:
    (state, its shardings, the restored step or None).
  """
  init_key, _ = streams.train_keys(config.seed)
  tx = make_optimizer(config)
  shapes = jax.eval_shape(lambda k: create_train_state(model, k, tx, config), init_key)
  sharding = mesh_lib.state_shardings(
    shapes, mesh, config.train.sharding, min_size=config.train.fsdp_min_size
  )
  changes = workdir_lib.check_resume_config(config, workdir, manager.latest_step())
  target = checkpoints.abstract_tree(shapes, sharding)
  state, restored = checkpoints.restore_latest_intact(manager, target)
  if state is None:
    create = jax.jit(lambda k: create_train_state(model, k, tx, config), out_shardings=sharding)
    return create(init_key), sharding, None
  bad = checkpoints.non_finite_fields(checkpoints.saved_fields(state))
  if bad:
    raise NonFiniteStateError(
      f"Checkpoint step {restored} in {workdir}/checkpoints holds non-finite values "
      f"(in {', '.join(bad)}; saved by a vdm_jax that did not check its saves): no "
      f"training can continue from it. To go on, {_way_back(manager, restored)}. " + _ADVICE
    )
  say(f"Resumed from {workdir}/checkpoints at step {restored}.")
  for field, (old, new) in changes.items():
    say(f"  config.{field}: {old!r} -> {new!r}")
  return state, sharding, restored


def _batches(config, mesh, step: int):
  """The training batches from `step` on, on the mesh. Batch `step + i` is the i-th
  yielded: prefetching reads ahead, never skips or reorders."""
  train_iter = data.make_train_iterator(
    config.data, global_batch_size=config.train.batch_size, seed=config.seed, start_step=step
  )
  return mesh_lib.prefetch_to_mesh(train_iter, mesh, size=config.train.prefetch)


def _say_sizes(info, state) -> None:
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  say(
    f"{info.name}: {info.shape} x V={info.vocab_size}; model {num_params:,} params; "
    f"{jax.device_count()} device(s) on {jax.process_count()} process(es)."
  )


class _Run:
  """What the loop's steps share: the state, the metric window, the saver and the writer.

  `_train` sets `writer`, `progress`, `profiler` and `step_fn` once they exist.
  """

  def __init__(self, config, workdir: str, model, mesh, stop: _StopSignals, saver, state):
    self.config, self.workdir, self.model, self.mesh = config, workdir, model, mesh
    self.stop, self.saver, self.state = stop, saver, state
    self.restored_step = saver.last_saved
    self.step = int(state.step)
    self.step_key = streams.train_keys(config.seed)[1]
    self.writer = self.progress = self.profiler = self.step_fn = None
    self.last_train: dict = {}
    self._restart_window()

  def _restart_window(self) -> None:
    """A new window of train metrics, timed from now (evaluation time is not training)."""
    self.pending, self.window_start, self.t0 = [], self.step, time.perf_counter()

  def train_step(self, batch) -> None:
    self.profiler.before(self.step + 1)
    self.state, metrics = self.step_fn(self.state, batch, self.step_key)
    self.step += 1
    self.profiler.after(self.step, self.state)
    self.pending.append(metrics)
    self.progress.update(1)
    self.saver.check()  # a background save that failed stops the run here

  def after_step(self) -> None:
    """What follows a step: metrics, a save, a stop on request, an evaluation. Metrics are
    fetched (and checked) before anything is saved, so no checkpoint ever holds parameters
    from after a non-finite loss or gradient."""
    train, step = self.config.train, self.step
    signum = self.stop.requested()
    saving = step % train.ckpt_every == 0 or step == train.num_steps or signum is not None
    evaluating = step % train.eval_every == 0 and step < train.num_steps and signum is None
    if step % train.log_every == 0 or saving or evaluating:
      self._log_window()
    if saving:
      self.save()
    if signum is not None:
      self.saver.wait()
      raise TrainingInterrupted(signum, step, self.workdir)
    if evaluating:
      self.evaluate_periodically()

  def _log_window(self) -> None:
    fetched = jax.device_get(self.pending)
    _check_metrics(fetched, self.window_start, self.step, self.saver)
    elapsed = time.perf_counter() - self.t0
    self.last_train = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    self.last_train["steps_per_sec"] = len(fetched) / elapsed
    self.writer.scalars(self.step, self.last_train, "train")
    self._restart_window()

  def save(self) -> None:
    """Saves checkpoint `step`, which must be finite: an update can overflow while the loss
    and the gradient norm of its step are finite (one reduction: 2.2 ms on digits, 2 CPUs)."""
    bad = checkpoints.non_finite_fields(checkpoints.saved_fields(self.state))
    if bad:
      where = _latest_checkpoint(self.saver, self.step, made_it=False)
      raise NonFiniteStateError(
        f"Training diverged at step {self.step}: its loss and gradient norm were finite, "
        f"but the state after it holds non-finite values (in {', '.join(bad)}): an "
        f"update overflowed. Nothing was saved for step {self.step}; {where}. {_ADVICE}"
      )
    self.saver.save(self.step, self.state)

  def redo_cut_off_evaluation(self) -> None:
    """A periodic evaluation that a signal cut off is done first (a later step's, or one
    the final evaluation replaces, is forgotten)."""
    pending, total = _pending_eval(self.workdir), self.config.train.num_steps
    if pending is not None and pending != self.step or self.step >= total:
      _clear_pending_eval(self.workdir)
    if pending == self.step and self.restored_step is not None and self.step < total:
      say(f"Evaluating step {self.step}, whose evaluation was cut off, before training on.")
      self.evaluate_periodically()

  def evaluate_periodically(self) -> None:
    """The evaluation and sample grid of the step, recorded as pending until both are done
    (the next launch redoes it if a signal cuts it off)."""
    _write_pending_eval(self.workdir, self.step)
    self.evaluate(final=False)
    _clear_pending_eval(self.workdir)
    self._restart_window()

  def evaluate(self, *, final: bool) -> dict:
    """The evaluation of the EMA params and the sample grid at this step, checked finite
    and logged. A signal during it raises `TrainingInterrupted` ("final": the next launch
    does it; periodic: checkpoint `step` is saved first, and the next launch redoes it)."""
    step = self.step
    notice = (
      "stopping the final evaluation, which the next launch performs, then exiting"
      if final
      else f"stopping the evaluation of step {step}, saving checkpoint {step}, then exiting"
    )
    try:
      with _signals.notice(notice):
        ema = jax.device_put(self.state.ema_params, mesh_lib.replicated(self.mesh))
        result = bpd.without_arrays(
          bpd.evaluate(self.model, ema, self.config, self.mesh, split=self.config.eval.split)
        )
        _check_evaluation(result, ema, step, self.saver, final=final)
        write_samples(self.model, ema, self.config, self.mesh, self.workdir, step, self.writer)
    except _signals.Stopped as e:
      if not final:
        if self.saver.last_saved != step:
          self.save()
        self.saver.wait()
      raise TrainingInterrupted(
        e.signum, step, self.workdir, "final" if final else "eval"
      ) from None
    self.writer.scalars(step, bpd.scalar_summary(result), "eval")
    return result

  def wait_for_last_save(self) -> None:
    """After the last step a signal waits for the final save, then skips the evaluation."""
    self.progress.close()
    with _signals.notice(
      "waiting for the final checkpoint to be written, then exiting; the final evaluation "
      "will run on the next launch"
    ):
      self.saver.wait()

  def final_evaluation(self) -> dict:
    """The final evaluation, done once per finished run (a rerun does it if it was cut
    off); the train section is written first, so it survives whatever cuts it off."""
    step, workdir = self.step, self.workdir
    previous = _read_final_metrics(workdir)
    if previous and previous.get("step") == step and previous.get("eval") is not None:
      say(f"Training finished at step {step}; final evaluation already in final_metrics.json.")
      return previous
    if not self.last_train and previous and previous.get("step") == step:
      self.last_train = previous.get("train") or {}
    _write_final_metrics(workdir, step, self.last_train, None)
    signum = self.stop.requested()
    if signum is not None:
      raise TrainingInterrupted(signum, step, workdir, "final")
    return _write_final_metrics(workdir, step, self.last_train, self.evaluate(final=True))


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


def _check_metrics(fetched: list, window_start: int, step: int, saver) -> None:
  """Raises `NonFiniteLossError` at the first of steps window_start + 1..step whose loss or
  gradient norm is NaN or infinite."""
  for i, m in enumerate(fetched):
    name = next((k for k in ("loss_bpd", "grad_norm") if not np.isfinite(m[k])), None)
    if name is None:
      continue
    bad = window_start + i + 1
    what = "Loss" if name == "loss_bpd" else "Gradient norm"
    # The loss of step `bad` is computed from the parameters after step bad - 1.
    where = _latest_checkpoint(saver, bad, made_it=saver.last_saved == bad - 1)
    raise NonFiniteLossError(
      f"{what} became {m[name]} at step {bad} (first non-finite step in "
      f"{window_start + 1}..{step}); nothing after step {bad - 1} was saved: {where}. {_ADVICE}"
    )


def _check_evaluation(result, ema, step: int, saver, *, final: bool) -> None:
  """Raises `bpd.NonFiniteEvaluationError` if the evaluation at `step` is not finite."""
  kind = "The final evaluation" if final else "The evaluation"
  if saver.last_saved == step:
    where = (
      f"Checkpoint step {step} holds these parameters; to go on, {_way_back(saver.manager, step)}"
    )
  else:
    where = _latest_checkpoint(saver, step, made_it=False)
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
