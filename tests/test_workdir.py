"""runtime/workdir.py in-process: the run lock, the config record and its resume check,
strict JSON and the metrics rows a resume replays."""

import json
import math
import os
import re

import numpy as np
import pytest

from vdm_jax.config import base_config
from vdm_jax.runtime import workdir


def test_the_run_lock_is_exclusive_and_names_its_holder(tmp_path):
  with workdir.lock(str(tmp_path)) as held:
    assert isinstance(held, workdir.RunLock)
    # flock belongs to the open file: a second opening conflicts, even in this process.
    with pytest.raises(workdir.WorkdirLockedError) as e, workdir.lock(str(tmp_path)):
      pass
    assert f"pid {os.getpid()} on host" in str(e.value)
    assert "use another --workdir" in str(e.value)
  with workdir.lock(str(tmp_path)):  # released: taken again
    pass


def test_strict_json_replaces_every_non_finite_number():
  value = {"a": float("nan"), "b": [1.5, np.float32("inf"), np.array([2.0, -np.inf])], "c": "x"}
  assert workdir.to_strict_json(value) == {"a": None, "b": [1.5, None, [2.0, None]], "c": "x"}
  text = workdir.dumps_strict({"x": (np.float64(-math.inf), 3, True)})
  assert json.loads(text) == {"x": [None, 3, True]}
  with pytest.raises(TypeError):
    workdir.dumps_strict({"x": object()})


def test_the_config_record_round_trips_and_keeps_a_history(tmp_path):
  config = base_config()
  config.data.name = "toy2d"
  config.optim.learning_rate = 3e-4
  first = workdir.record_config(config, str(tmp_path), 0)
  again = workdir.record_config(config, str(tmp_path), 0)
  later = workdir.record_config(config, str(tmp_path), 10)
  assert [os.path.basename(p) for p in (first, again, later)] == [
    "config.step0.json",
    "config.step0.1.json",
    "config.step10.json",
  ]
  record = json.loads((tmp_path / "config.json").read_text())
  assert record[workdir.FORMAT_KEY] == workdir.FORMAT_VERSION
  back = workdir.read_config_record(str(tmp_path))  # a folder stands for its config.json
  assert workdir.changed_fields(workdir.config_as_dict(back), workdir.config_as_dict(config)) == {}


@pytest.mark.parametrize(
  ("text", "message"),
  [("{oops", "cannot be read (JSONDecodeError"), ("[1, 2]", "is not a JSON object")],
)
def test_an_unreadable_config_record_is_named(tmp_path, text, message):
  (tmp_path / "config.json").write_text(text)
  with pytest.raises(ValueError, match=re.escape(message)) as e:
    workdir.read_config_record(str(tmp_path / "config.json"))
  assert str(tmp_path / "config.json") in str(e.value)


def test_a_newer_format_is_refused_with_the_way_out(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({workdir.FORMAT_KEY: 10**6}))
  with pytest.raises(workdir.FormatVersionError, match="Upgrade vdm_jax"):
    workdir.read_config_record(str(tmp_path))


def test_a_resume_refuses_a_config_that_changes_what_checkpoints_mean(tmp_path):
  config = base_config()
  config.data.name = "toy2d"
  workdir.record_config(config, str(tmp_path), 0)
  assert workdir.check_resume_config(config, str(tmp_path), 5) == {}
  changed = base_config()
  changed.data.name = "toy2d"
  changed.model.n_embd = config.model.n_embd * 2
  changed.train.num_steps = config.train.num_steps + 1  # how training goes on: allowed
  with pytest.raises(ValueError) as e:
    workdir.check_resume_config(changed, str(tmp_path), 5)
  assert f"config.model.n_embd: {config.model.n_embd} -> {changed.model.n_embd}" in str(e.value)
  assert "num_steps" not in str(e.value)
  assert "--config.train.allow_config_changes=model.n_embd" in str(e.value)
  changed.train.allow_config_changes = "model.n_embd"
  accepted = workdir.check_resume_config(changed, str(tmp_path), 5)
  assert accepted["model.n_embd"] == (config.model.n_embd, changed.model.n_embd)
  # Nothing to resume: any config starts afresh.
  assert workdir.check_resume_config(changed, str(tmp_path / "new"), None) == {}


def test_a_resume_without_config_json_names_the_history_copy(tmp_path):
  config = base_config()
  config.data.name = "toy2d"
  copy = workdir.record_config(config, str(tmp_path), 0)
  (tmp_path / "config.json").unlink()
  with pytest.raises(ValueError, match="have no config.json") as e:
    workdir.check_resume_config(config, str(tmp_path), 5)
  assert f"({copy} -> {tmp_path / 'config.json'})" in str(e.value)


def test_a_resume_drops_the_metric_rows_it_replays(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (5, 10, 15)]
  path.write_text("".join(rows) + '{"step": 20, "lo')  # the last row cut short by a kill
  assert workdir.drop_replayed_rows(str(path), 10) == 2
  assert path.read_text() == "".join(rows[:2])
  assert workdir.drop_replayed_rows(str(path), 10) == 0
  assert workdir.read_rows(str(tmp_path / "absent.jsonl")) == []
