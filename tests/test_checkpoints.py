"""runtime/checkpoints.py and training/saver.py in-process, on a tiny state (no model, no
training): integrity records, partial restores, falling back past a damaged step, and a
background save that fails."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import full_disk_at_commit
from orbax.checkpoint._src.path import atomicity

from vdm_jax.runtime import checkpoints
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.training.saver import CheckpointSaveError, Saver
from vdm_jax.training.state import TrainState


def _state(step: int, value: float = 1.0):
  """A tiny train state (time_moments None: left out of checkpoints)."""
  params = {"w": jnp.full((3, 2), value), "b": jnp.arange(2.0) + value}
  return TrainState(
    step=jnp.asarray(step, jnp.int32),
    apply_fn=None,
    params=params,
    tx=optax.sgd(0.1),
    opt_state={"mu": jax.tree.map(jnp.zeros_like, params)},
    ema_params=jax.tree.map(lambda x: x / 2, params),
  )


def _target():
  shapes = jax.eval_shape(lambda: checkpoints.saved_fields(_state(0)))
  return checkpoints.abstract_tree(shapes, mesh_lib.replicated(mesh_lib.make_mesh()))


def _saved(workdir, steps):
  manager = checkpoints.make_checkpoint_manager(str(workdir), max_to_keep=5)
  with Saver(manager) as saver:
    for s in steps:
      saver.save(s, _state(s, value=float(s)))
  return workdir


def test_the_saved_fields_are_the_train_state_array_fields():
  assert sorted(checkpoints.saved_fields(_state(0))) == [
    "ema_params",
    "opt_state",
    "params",
    "step",
  ]
  with_moments = _state(0).replace(time_moments=jnp.ones(4))
  assert "time_moments" in checkpoints.saved_fields(with_moments)


def test_a_save_records_checksums_and_restores_verified(tmp_path):
  workdir = _saved(tmp_path / "run", [1, 2])
  record = json.loads((workdir / "checksums" / "2.json").read_text())
  assert record["_format_version"] == checkpoints.workdir_lib.FORMAT_VERSION
  manager = checkpoints.make_checkpoint_manager(str(workdir), max_to_keep=5)
  with manager:
    fields = checkpoints._restore_fields(manager, 2, _target())
  assert record["['params']['w']"] == checkpoints.checksums(fields)["['params']['w']"]
  np.testing.assert_array_equal(fields["ema_params"]["w"], np.full((3, 2), 1.0))
  assert int(fields["step"]) == 2


def test_a_damaged_step_is_set_aside_and_the_previous_one_restored(tmp_path, capsys):
  workdir = _saved(tmp_path / "run", [1, 2])
  record = workdir / "checksums" / "2.json"
  sums = json.loads(record.read_text())
  sums["['params']['w']"] = "00000000" + sums["['params']['w']"][8:]  # a different CRC
  record.write_text(json.dumps(sums))
  target = _state(0)
  target = target.replace(**_target())
  manager = checkpoints.make_checkpoint_manager(str(workdir), max_to_keep=5)
  with manager:
    fields, step = checkpoints.restore_latest_intact(manager, target)
  assert step == 1 and int(fields.step) == 1
  np.testing.assert_array_equal(fields.params["b"], [1.0, 2.0])
  assert "Checkpoint step 2 in " in capsys.readouterr().err
  assert os.listdir(workdir / "checkpoints_damaged") == ["2"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]


def test_a_missing_integrity_record_is_named(tmp_path):
  workdir = _saved(tmp_path / "run", [1])
  (workdir / "checksums" / "1.json").unlink()
  manager = checkpoints.make_checkpoint_manager(str(workdir), max_to_keep=5)
  with manager, pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints._restore_fields(manager, 1, _target())
  assert "Checkpoint step 1 in " in str(e.value)
  assert f"{workdir}/checksums/1.json is missing" in str(e.value)
  assert checkpoints.UNVERIFIED_ENV in str(e.value)


def test_non_finite_fields_are_named():
  state = _state(0)
  assert checkpoints.non_finite_fields(checkpoints.saved_fields(state)) == []
  state.opt_state["mu"]["b"] = jnp.array([0.0, jnp.inf])
  state.ema_params["w"] = state.ema_params["w"].at[0, 0].set(jnp.nan)
  state.params["w"] = state.params["w"].astype(jnp.int32)  # integers are not checked
  assert checkpoints.non_finite_fields(checkpoints.saved_fields(state)) == [
    "ema_params",
    "opt_state",
  ]


def test_a_failed_background_save_names_its_step_and_leaves_nothing(tmp_path, monkeypatch):
  """The commit of step 2 (orbax's background thread) fails as on a full disk: the next
  check or save raises one message naming step 2 and step 1, without orbax's tracebacks,
  and step 2's temporary folder and integrity record are removed."""
  workdir = tmp_path / "run"
  manager = checkpoints.make_checkpoint_manager(str(workdir), max_to_keep=5)
  with full_disk_at_commit(monkeypatch, 2) as records:
    with pytest.raises(CheckpointSaveError) as e, Saver(manager) as saver:
      saver.save(1, _state(1))
      saver.save(2, _state(2))
      saver.save(3, _state(3))  # waits for step 2 first: its failure is raised here
  assert str(e.value) == (
    f"Saving checkpoint step 2 to {workdir}/checkpoints failed: OSError: [Errno 28] No space "
    "left on device. Training stopped; the latest saved checkpoint is step 1, and a rerun "
    "resumes from it. Check free disk space and permissions."
  )
  assert [r.getMessage()[:80] for r in records if r.exc_info] == []
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]
  assert sorted(os.listdir(workdir / "checksums")) == ["1.json"]
  assert saver.last_saved == 1


def test_check_raises_once_a_background_save_has_failed(tmp_path, monkeypatch):
  async def fails(self):
    raise OSError(13, "Permission denied")

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", fails)
  manager = checkpoints.make_checkpoint_manager(str(tmp_path / "run"), max_to_keep=5)
  with pytest.raises(CheckpointSaveError, match="step 4 .* Permission denied.* from step 0"):
    with Saver(manager) as saver:
      saver.save(4, _state(4))
      while manager.is_saving_in_progress():
        pass
      saver.check()


def test_load_ema_params_moved_to_inference_with_a_deprecated_alias(tmp_path):
  from helpers import tiny_config

  from vdm_jax.runtime import inference

  config = tiny_config(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="No checkpoints in"):
    inference.load_ema_params(config, str(tmp_path))
  with (
    pytest.warns(DeprecationWarning, match="runtime.inference.load_ema_params"),
    pytest.raises(FileNotFoundError, match="No checkpoints in"),
  ):
    checkpoints.load_ema_params(config, str(tmp_path))


def test_restore_ema_params_reads_the_ema_subtree_alone(tmp_path):
  workdir = _saved(tmp_path / "run", [1, 2])
  target = _target()["ema_params"]
  params, step = checkpoints.restore_ema_params(str(workdir), target)
  assert step == 2
  np.testing.assert_array_equal(params["b"], np.array([2.0, 3.0]) / 2)
  params, step = checkpoints.restore_ema_params(str(workdir), target, step=1)
  np.testing.assert_array_equal(params["w"], np.full((3, 2), 0.5))
  with pytest.raises(ValueError, match=r"No checkpoint for step 5 .* available: \[1, 2\]"):
    checkpoints.restore_ema_params(str(workdir), target, step=5)
