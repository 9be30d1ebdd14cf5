"""The input pipeline leaves a program's absl flags alone (grain 0.2.18 workaround)."""

import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent(
  """
  import numpy as np
  from absl import flags

  from vdm_jax.data import make_train_iterator

  USER = flags.DEFINE_integer("user_flag", 3, "A flag of the program that imports vdm_jax.")


  def main():
    config = {"name": "toy2d", "data_dir": "", "num_workers": 1}
    config = type("DataConfig", (), config)
    it = make_train_iterator(config, global_batch_size=8, seed=0)
    batch = next(it)
    assert batch["image"].shape == (8, 2), batch["image"].shape
    it.close()
    assert not flags.FLAGS.is_parsed(), "the pipeline marked every flag as parsed"
    try:
      USER.value
    except flags.UnparsedFlagAccessError:
      print("unparsed as before")


  if __name__ == "__main__":
    main()
  """
)


@pytest.mark.slow  # starts grain worker processes
def test_worker_processes_outside_an_absl_app_leave_user_flags_unparsed(tmp_path):
  """grain's worker processes read a grain flag; outside an absl app (flags never parsed)
  the pipeline makes only that flag readable, not every flag of the program."""
  script = tmp_path / "program.py"
  script.write_text(_PROGRAM)
  result = subprocess.run(
    [sys.executable, str(script)], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "unparsed as before" in result.stdout
