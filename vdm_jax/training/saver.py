"""The checkpoints a training run writes: `Saver`, asynchronous saves that fail loudly.

orbax writes a checkpoint in a background thread: training goes on while step N's arrays
are written, and a failure (a full disk, lost permissions) is only known once that thread
has ended. `Saver` notices it at the first step boundary after it ended (`check`, called
every step: one `is_saving_in_progress()` query), and before the next save is started, and
turns it into `CheckpointSaveError`: one paragraph naming the step whose save failed and the
newest checkpoint a rerun resumes from. The failed step's temporary folder and its
integrity record are removed, and orbax's own log records of the failure (each with a
traceback) are filtered out while the saver is open: the error says it in one line.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from vdm_jax._errors import UserError
from vdm_jax.runtime import checkpoints, distributed, storage

__all__ = ["CheckpointSaveError", "Saver"]


class CheckpointSaveError(UserError, RuntimeError):
  """A checkpoint save failed (disk full, permissions, ...); training stopped."""


# The log records orbax writes (with tracebacks) when a background save fails; `Saver`
# reports the same failure as `CheckpointSaveError`.
_ORBAX_FAILURE_RECORDS = (
  "callback in background save thread",
  "Finalize thread (%s) failed",
  "Checkpointer failed: one or more items may not be",
)


def _not_a_save_failure_record(record) -> bool:
  """absl logging filter: False for orbax's records of a failed background save."""
  message = str(record.msg)
  return not any(part in message for part in _ORBAX_FAILURE_RECORDS)


class Saver:
  """Saves checkpoints of a run through `manager` (asynchronously) and reports a failed save.

  A context manager: on a normal exit it waits for the last save (raising
  `CheckpointSaveError` if it failed); on an exception it waits without raising again; it
  closes the manager either way.

  Attributes:
    last_saved: the newest step whose save was started (None: none this run or before it).
  """

  def __init__(self, manager, last_saved: int | None = None, lock=None):
    self.manager = manager
    self.last_saved = last_saved
    self._lock = lock  # a gs:// lease: checked before every save
    self._in_flight: int | None = None  # the step whose background save may be running
    self._logger = logging.get_absl_logger()

  def __enter__(self) -> Saver:
    self._logger.addFilter(_not_a_save_failure_record)
    return self

  def __exit__(self, kind, error, tb) -> None:
    try:
      if kind is None:
        self.wait()
      else:  # already failing: the first error is the one reported
        try:
          self.manager.wait_until_finished()
        except Exception:  # reported by `wait` or `check` before, or secondary
          pass
      self.manager.close()
    finally:
      self._logger.removeFilter(_not_a_save_failure_record)

  def save(self, step: int, state) -> None:
    """Starts saving `state` as checkpoint `step`, once the previous save has completed.

    Raises:
      CheckpointSaveError: the previous save, or the synchronous part of this one (the
        integrity record, orbax's folders), failed.
    """
    self.wait()  # orbax would wait for it too; waiting here names the step that failed
    if self._lock is not None:
      self._lock.check()  # a gs:// lease lost to another run: write nothing more
    try:
      checkpoints.save_checkpoint(self.manager, step, state)
    except Exception as e:
      distributed.exit_if_lost_peer(e)  # not a failed save: a peer is gone (ends the process)
      raise self._failed(step, e) from e
    self._in_flight = self.last_saved = step

  def check(self) -> None:
    """Raises `CheckpointSaveError` if a background save has ended in failure (cheap when
    none is running: call it every step)."""
    if self._in_flight is not None and not self.manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Waits for the background save, if any; raises `CheckpointSaveError` if it failed."""
    try:
      self.manager.wait_until_finished()
      self.manager.check_for_errors()
    except Exception as e:
      # A peer that died during the save's commit is not a failed save, and cleaning up
      # after one (orbax's reload, a barrier) would wait for the lost peer: end at once.
      distributed.exit_if_lost_peer(e)
      step = self._in_flight if self._in_flight is not None else self.last_saved
      raise self._failed(step, e) from e
    self._in_flight = None

  def _failed(self, step: int | None, error: BaseException) -> CheckpointSaveError:
    """The error of a failed save of `step`, once what it left is removed."""
    self._in_flight = None
    try:
      self.manager.reload()
      kept = list(self.manager.all_steps())
    except Exception:  # the listing fails too (the storage is gone): say nothing of it
      kept = []
    if step is not None and step not in kept:
      discard_failed_save(os.fspath(self.manager.directory), step)
    older = [s for s in kept if step is None or s < step]
    if step is not None and self.last_saved == step:
      self.last_saved = max(older) if older else None
    where = (
      f"the latest saved checkpoint is step {max(older)}, and a rerun resumes from it"
      if older
      else "no earlier checkpoint is saved, so a rerun starts from step 0"
    )
    return CheckpointSaveError(
      f"Saving checkpoint step {step} to {os.fspath(self.manager.directory)} failed: "
      f"{type(error).__name__}: {checkpoints.first_line(error)}. Training stopped; {where}. "
      "Check free disk space and permissions."
    )


def discard_failed_save(directory: str, step: int) -> None:
  """Removes what a failed save of `step` left in the checkpoint folder `directory`
  (`<workdir>/checkpoints`): orbax's temporary folders `<step>.orbax-checkpoint-tmp*`
  and the step's integrity record `<workdir>/checksums/<step>.json` (process 0; best
  effort: on a full disk, removing is what still works)."""
  if jax.process_index() != 0:
    return
  prefix = f"{step}.orbax-checkpoint-tmp"
  try:
    leftovers = [n for n in storage.listdir(directory) if n.startswith(prefix)]
  except OSError:
    leftovers = []
  for name in leftovers:
    storage.remove_tree(storage.join(directory, name))
  record = storage.join(storage.dirname(directory), "checksums", f"{step}.json")
  try:
    storage.remove(record, missing_ok=True)
  except OSError:
    pass
