"""The training loop's order of work, in-process: every input is checked before the work
directory is written, and the random streams keep their derivations."""

import jax
import numpy as np
import pytest
from helpers import tiny_config

from vdm_jax import streams, training
from vdm_jax.config import base_config


@pytest.mark.parametrize("inside", [False, True])
def test_a_bad_data_dir_leaves_no_work_directory(tmp_path, inside):
  """The data is checked (and an offline dataset prepared) before the work directory and its
  lock are made: a data_dir that is a file is a user error and nothing is written."""
  afile = tmp_path / "afile"
  afile.write_text("not a folder")
  data_dir = afile / "sub" if inside else afile
  workdir = tmp_path / "run"
  with pytest.raises(training.USER_ERRORS) as e:
    training.train_and_evaluate(tiny_config(data_dir), str(workdir))
  assert f"'{afile}' is a file, not a directory" in str(e.value)
  assert not workdir.exists()


def test_the_random_streams_are_the_documented_derivations():
  """Each stream against its derivation written out (the numbers results depend on)."""
  seed = 7
  init_key, step_key = streams.train_keys(seed)
  expected = jax.random.split(jax.random.key(seed))
  np.testing.assert_array_equal(jax.random.key_data(init_key), jax.random.key_data(expected[0]))
  np.testing.assert_array_equal(jax.random.key_data(step_key), jax.random.key_data(expected[1]))
  assert streams.evaluation_seed(seed) == 8 and streams.ode_seed(seed) == 9
  grid = jax.random.fold_in(jax.random.key(seed), 1_000_003)
  np.testing.assert_array_equal(
    jax.random.key_data(streams.sample_grid_key(seed)), jax.random.key_data(grid)
  )
  # The streams differ from one another.
  keys = [init_key, step_key, jax.random.key(8), jax.random.key(9), grid]
  data = {tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys}
  assert len(data) == len(keys)


def test_the_largest_seed_leaves_room_for_every_offset():
  from vdm_jax import config as config_lib
  from vdm_jax.evaluation import bpd

  c = base_config()
  c.data.name, c.model.denoiser = "toy2d", "mlp"
  c.seed = 2**32 - 1 - streams.MAX_OFFSET
  config_lib.validate(c)
  assert bpd.evaluation_seed(c) == c.seed + streams.EVALUATION < 2**32
  c.seed += 1
  with pytest.raises(ValueError, match="config.seed"):
    config_lib.validate(c)


def test_one_list_of_user_errors_for_the_library_and_the_tools(capsys):
  """The training errors are user errors of the one list, and the tools' handler prints one
  of them as one line with exit status 1 (a bug keeps its traceback)."""
  from vdm_jax import _cli, _errors
  from vdm_jax.runtime import checkpoints, workdir

  assert training.USER_ERRORS is _errors.USER_ERRORS
  for kind in (
    checkpoints.CheckpointError,
    workdir.WorkdirLockedError,
    training.CheckpointSaveError,
    training.NonFiniteLossError,
    training.NonFiniteStateError,
  ):
    assert issubclass(kind, training.USER_ERRORS) and issubclass(kind, RuntimeError), kind
  with pytest.raises(SystemExit) as e, _cli.user_errors_exit():
    raise training.CheckpointSaveError("Saving checkpoint step 6 failed: disk full.")
  assert e.value.code == "error: Saving checkpoint step 6 failed: disk full."
  with pytest.raises(KeyError), _cli.user_errors_exit():
    raise KeyError("a bug")
