"""Training (README "Layout": layer 6): the train state, the pure step, the loop.

* `state`: TrainState (params, optimizer state, EMA), the optimizer.
* `step`: the pure `train_step` and its jitted, sharded form.
* `metrics`: TensorBoard / metrics.jsonl / stdout, the progress bar.
* `loop`: `train_and_evaluate(config, workdir)`.
* `benchmark`: train/eval step speed, compile time and memory.

Checkpoints, the mesh and the workdir lock live in `vdm_jax.runtime` (shared with evaluation).
"""

from vdm_jax.runtime.checkpoints import CheckpointError
from vdm_jax.training.loop import (
  USER_ERRORS,
  CheckpointSaveError,
  NonFiniteLossError,
  NonFiniteStateError,
  TrainingInterrupted,
  train_and_evaluate,
  write_samples,
)
from vdm_jax.training.state import TrainState, create_train_state, make_optimizer
from vdm_jax.training.step import jit_train_step, train_step

__all__ = [
  "USER_ERRORS",
  "CheckpointError",
  "CheckpointSaveError",
  "NonFiniteLossError",
  "NonFiniteStateError",
  "TrainState",
  "TrainingInterrupted",
  "create_train_state",
  "jit_train_step",
  "make_optimizer",
  "train_and_evaluate",
  "train_step",
  "write_samples",
]
