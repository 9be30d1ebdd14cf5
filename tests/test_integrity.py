"""Integrity records are not optional, and a full disk stops a run with one message.

A checkpoint step whose checksums record is missing or unreadable is treated as unverified:
not used (a resume falls back past it like a damaged step, an evaluation says which step
to choose) unless VDM_JAX_ALLOW_UNVERIFIED=1; a resume without config.json is refused with
the way out; a failed save names the step and the checkpoint a rerun resumes from, and
leaves no temporary file."""

import os
import shutil

import jax
import pytest
from helpers import full_disk_at_commit, tiny_config

from vdm_jax import data, models, training
from vdm_jax.runtime import checkpoints, inference, storage, workdir
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.training.state import create_train_state, make_optimizer


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
  """A tiny run with checkpoints at steps 3 and 6 (its final evaluation included)."""
  run = tmp_path_factory.mktemp("trained") / "run"
  training.train_and_evaluate(tiny_config(data_dir), str(run))
  return run


@pytest.fixture
def run(trained, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(trained, copy)
  return copy


def _restore_latest(config, run):
  model = models.make_model(config, data.dataset_info(config.data))
  tx = make_optimizer(config)
  shapes = jax.eval_shape(lambda k: create_train_state(model, k, tx, config), jax.random.key(0))
  target = checkpoints.abstract_tree(shapes, mesh_lib.replicated(mesh_lib.make_mesh()))
  manager = checkpoints.make_checkpoint_manager(str(run), max_to_keep=5)
  try:
    return checkpoints.restore_latest_intact(manager, target)[1]
  finally:
    manager.close()


@pytest.mark.slow  # trains a run first: ~45 s under load
def test_a_step_without_its_integrity_record_is_not_used(data_dir, run, capsys, monkeypatch):
  record = run / "checksums" / "6.json"
  record.unlink()
  config = tiny_config(data_dir)
  # Evaluation of that step: refused, naming the record, the step and the older one.
  with pytest.raises(checkpoints.CheckpointError) as e:
    inference.load_ema_params(config, str(run))
  assert f"Checkpoint step 6 in {run}/checkpoints cannot be verified" in str(e.value)
  assert f"integrity record {record} is missing" in str(e.value)
  assert "VDM_JAX_ALLOW_UNVERIFIED=1" in str(e.value) and "--step=3" in str(e.value)
  # Opting in uses it, with a warning.
  monkeypatch.setenv(checkpoints.UNVERIFIED_ENV, "1")
  assert inference.load_ema_params(config, str(run))[3] == 6
  assert "Used unverified" in capsys.readouterr().err
  monkeypatch.delenv(checkpoints.UNVERIFIED_ENV)
  # A resume falls back to step 3 like from a damaged step, and sets step 6 aside.
  assert _restore_latest(config, run) == 3
  assert "Resuming from step 3, the newest intact checkpoint" in capsys.readouterr().err
  assert (run / "checkpoints_damaged" / "6").is_dir() and not (run / "checkpoints" / "6").exists()


@pytest.mark.parametrize(
  ("text", "problem"),
  [
    ("{not json", "cannot be read (JSONDecodeError: Expecting property name"),
    ("[1, 2]", "is not a JSON object"),
  ],
)
def test_an_unreadable_integrity_record_is_named(tmp_path, text, problem):
  (tmp_path / "checksums").mkdir()
  (tmp_path / "checksums" / "6.json").write_text(text)
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints._expected_checksums(str(tmp_path), 6, str(tmp_path / "checkpoints"))
  assert f"Checkpoint step 6 in {tmp_path}/checkpoints cannot be verified" in str(e.value)
  assert f"integrity record {tmp_path}/checksums/6.json {problem}" in str(e.value)


def test_a_resume_without_config_json_is_refused_with_the_way_out(data_dir, run):
  (run / "config.json").unlink()
  with pytest.raises(ValueError) as e:
    workdir.check_resume_config(tiny_config(data_dir), str(run), 6)
  message = str(e.value)
  assert f"have no config.json ({run}/config.json)" in message
  assert f"{run}/config_history/config.step0.json -> {run}/config.json" in message
  (run / "config.json").write_text("{garbage")
  with pytest.raises(ValueError, match=f"The run record {run}/config.json cannot be read"):
    workdir.check_resume_config(tiny_config(data_dir), str(run), 6)


def test_config_history_is_ordered_by_step_and_restart():
  names = ["config.step10.json", "config.step2.json", "config.step10.1.json", "config.step0.json"]
  order = sorted(names, key=workdir._history_order)
  assert order == [
    "config.step0.json",
    "config.step2.json",
    "config.step10.json",
    "config.step10.1.json",
  ]


@pytest.mark.slow  # trains until the disk fills: ~20 s under load
def test_a_full_disk_stops_at_the_failed_save_naming_it(data_dir, tmp_path, monkeypatch):
  write = storage.write_atomic

  def enospc(fd):
    raise OSError(28, "No space left on device")

  def full_disk(path, text):  # the disk fills up while the checksums of step 6 are written
    if str(path).endswith(os.path.join("checksums", "6.json")):
      with monkeypatch.context() as m:
        m.setattr(os, "fsync", enospc)
        return write(path, text)
    return write(path, text)

  monkeypatch.setattr(storage, "write_atomic", full_disk)
  run = tmp_path / "run"
  with pytest.raises(training.CheckpointSaveError) as e:
    training.train_and_evaluate(tiny_config(data_dir), str(run))
  assert str(e.value).startswith(f"Saving checkpoint step 6 to {run}/checkpoints failed: OSError")
  assert "No space left on device. Training stopped; the latest saved checkpoint is step 3" in str(
    e.value
  )
  assert sorted(os.listdir(run / "checksums")) == ["3.json"]  # no temporary file left
  assert sorted(os.listdir(run / "checkpoints")) == ["3"]


@pytest.mark.slow  # 19 s (a whole run); tests/test_checkpoints.py has the fast unit test
def test_a_failed_background_save_stops_the_run_naming_its_step(data_dir, tmp_path, monkeypatch):
  """orbax writes a checkpoint in a background thread: its failure (here the commit of step
  6 on a full disk) is one message naming step 6 and the checkpoint a rerun resumes from,
  orbax's own tracebacks are not logged, and nothing of step 6 is left behind."""
  run = tmp_path / "run"
  with full_disk_at_commit(monkeypatch, 6) as records:
    with pytest.raises(training.CheckpointSaveError) as e:
      training.train_and_evaluate(tiny_config(data_dir, num_steps=9), str(run))
  assert str(e.value) == (
    f"Saving checkpoint step 6 to {run}/checkpoints failed: OSError: [Errno 28] No space left "
    "on device. Training stopped; the latest saved checkpoint is step 3, and a rerun resumes "
    "from it. Check free disk space and permissions."
  )
  assert [r for r in records if r.exc_info] == []  # no orbax traceback
  assert sorted(os.listdir(run / "checkpoints")) == ["3"]  # no temporary folder left
  assert sorted(os.listdir(run / "checksums")) == ["3.json"]  # nor a record of step 6 or 9
  assert not (run / "final_metrics.json").exists()
