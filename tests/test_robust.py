"""Runs that survive and fail early: preemption, one run per workdir, damaged checkpoints,
resumes with a changed config, a cut-off final evaluation, validation before any write."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import restore_state, run_script, tiny_config
from jax.experimental import checkify

from vdm_jax import config as config_lib
from vdm_jax import elbo, evaluation, training
from vdm_jax.evaluation import bpd, report
from vdm_jax.runtime import checkpoints, inference, workdir

REPO = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _leaves(workdir_path, step):
  return [np.asarray(x) for x in jax.tree.leaves(restore_state(str(workdir_path), step))]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)


_LONG_RUN = """
import sys
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from vdm_jax import training
c = tiny_config({data_dir!r}, num_steps={num_steps}, ckpt_every=10_000, log_every=1)
try:
  training.train_and_evaluate(c, {workdir!r})
except training.TrainingInterrupted as e:
  print(e, file=sys.stderr)
  sys.exit(128 + e.signum)
"""


@pytest.mark.slow  # trains and resumes runs: a minute or more under load
def test_sigterm_saves_and_the_rerun_is_bit_identical(data_dir, tmp_path):
  num_steps = 150
  run = tmp_path / "run"

  def config():  # as in _LONG_RUN
    return tiny_config(data_dir, num_steps=num_steps, ckpt_every=10_000, log_every=1)

  code = _LONG_RUN.format(
    tests=str(REPO / "tests"), data_dir=str(data_dir), workdir=str(run), num_steps=num_steps
  )
  proc = subprocess.Popen(
    [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  try:
    for line in proc.stdout:  # wait until it is training
      if line.startswith("[train] step 5:"):
        break
    # A second run in the same workdir is refused at once, naming the first.
    start = time.perf_counter()
    with pytest.raises(workdir.WorkdirLockedError, match=f"pid {proc.pid} on host"):
      training.train_and_evaluate(config(), str(run))
    assert time.perf_counter() - start < 30
    # TensorBoard and metrics.jsonl are on disk while it runs (flushed at each log).
    assert sum(p.stat().st_size for p in (run / "tb").iterdir()) > 0
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  saved = int(stderr.split("Stopped by SIGTERM after step ")[1].split(";")[0])
  assert 5 <= saved < num_steps
  assert (run / "checkpoints" / str(saved)).is_dir()

  out = training.train_and_evaluate(config(), str(run))
  assert out["step"] == num_steps and out["eval"]["num_examples"] == 300
  straight = tmp_path / "straight"
  training.train_and_evaluate(config(), str(straight))
  _assert_same(_leaves(run, num_steps), _leaves(straight, num_steps))
  # The rows of the steps replayed after the resume were dropped: one row per step.
  rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if r["kind"] == "train"]
  assert steps == list(range(1, num_steps + 1))
  assert sorted(p.name for p in (run / "config_history").iterdir()) == [
    "config.step0.json",
    f"config.step{saved}.json",
  ]


def test_cut_off_final_evaluation_is_redone(data_dir, tmp_path, monkeypatch):
  run = tmp_path / "run"
  evaluate = bpd.evaluate

  def dies(*args, **kwargs):
    raise KeyboardInterrupt  # the process is killed during the final evaluation

  monkeypatch.setattr(bpd, "evaluate", dies)
  with pytest.raises(KeyboardInterrupt):
    training.train_and_evaluate(tiny_config(data_dir), str(run))
  # The train section is written before the evaluation starts: the kill does not lose it.
  cut_off = json.loads((run / "final_metrics.json").read_text())
  assert cut_off["step"] == 6 and cut_off["eval"] is None and cut_off["train"]["loss_bpd"] > 0
  monkeypatch.setattr(bpd, "evaluate", evaluate)
  out = training.train_and_evaluate(tiny_config(data_dir), str(run))
  assert out["step"] == 6 and out["eval"]["num_examples"] == 300
  assert out["train"] == cut_off["train"]
  recorded = json.loads((run / "final_metrics.json").read_text())
  assert recorded["eval"]["bpd"] == out["eval"]["bpd"]
  # A further rerun neither re-evaluates nor loses the evaluation.
  monkeypatch.setattr(bpd, "evaluate", dies)
  assert training.train_and_evaluate(tiny_config(data_dir), str(run))["eval"] == recorded["eval"]


def _flip_bytes(step_dir: pathlib.Path) -> pathlib.Path:
  files = [p for p in step_dir.rglob("*") if p.is_file() and "state" in p.parts]
  target = max(files, key=lambda p: p.stat().st_size)
  raw = bytearray(target.read_bytes())
  for i in range(len(raw) // 2, len(raw) // 2 + 64):
    raw[i] ^= 0xFF
  target.write_bytes(bytes(raw))
  return target


@pytest.mark.slow  # trains and resumes runs: a minute or more under load
def test_damaged_latest_checkpoint_falls_back_to_the_previous_step(data_dir, tmp_path, capsys):
  straight, run = tmp_path / "straight", tmp_path / "run"
  training.train_and_evaluate(tiny_config(data_dir), str(straight))
  training.train_and_evaluate(tiny_config(data_dir), str(run))  # checkpoints 3 and 6
  _flip_bytes(run / "checkpoints" / "6")
  (run / "final_metrics.json").unlink()
  capsys.readouterr()
  out = training.train_and_evaluate(tiny_config(data_dir), str(run))
  err = capsys.readouterr().err
  assert "Checkpoint step 6" in err and "Resuming from step 3" in err, err
  assert (run / "checkpoints_damaged" / "6").is_dir()
  assert out["step"] == 6
  _assert_same(_leaves(run, 6), _leaves(straight, 6))

  # Inference reads (and verifies) only the EMA params: an EMA array that differs from its
  # recorded checksum is refused, naming the step and the way out.
  sums_path = run / "checksums" / "6.json"
  sums = json.loads(sums_path.read_text())
  ema_key = next(k for k in sums if k.startswith("['ema_params']"))
  sums[ema_key] = "00000000" + sums[ema_key][8:]
  sums_path.write_text(json.dumps(sums))
  with pytest.raises(checkpoints.CheckpointError, match=r"step 6 .* damaged.*--step=3"):
    inference.load_ema_params(tiny_config(data_dir), str(run))
  _, _, params, step = inference.load_ema_params(tiny_config(data_dir), str(run), step=3)
  assert step == 3 and jax.tree.leaves(params)


@pytest.mark.slow  # trains and resumes runs: a minute or more under load
def test_resume_with_a_different_meaning_is_refused(data_dir, tmp_path):
  run = tmp_path / "run"
  training.train_and_evaluate(tiny_config(data_dir), str(run))
  recorded = (run / "config.json").read_text()
  for field, value, shown in [
    ("model.n_embd", 32, "config.model.n_embd: 16 -> 32"),
    ("train.batch_size", 16, "config.train.batch_size: 32 -> 16"),
    ("seed", 1, "config.seed: 0 -> 1"),
  ]:
    c = tiny_config(data_dir)
    section, _, name = field.rpartition(".")
    (c[section] if section else c)[name] = value
    with pytest.raises(ValueError, match=shown):
      training.train_and_evaluate(c, str(run))
    assert (run / "config.json").read_text() == recorded  # the record is untouched
  # Safe changes resume; a named change is accepted.
  assert training.train_and_evaluate(tiny_config(data_dir, num_steps=9), str(run))["step"] == 9
  c = tiny_config(data_dir, num_steps=12)
  c.model.dropout, c.train.allow_config_changes = 0.2, "model.dropout"
  assert training.train_and_evaluate(c, str(run))["step"] == 12
  assert json.loads((run / "config.json").read_text())["model"]["dropout"] == 0.2


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("model.norm_groups", 0, "config.model.norm_groups must be an integer >= 1, got 0"),
    ("model.norm_groups", -8, "config.model.norm_groups must be an integer >= 1, got -8"),
    ("optim.b1", 1.5, r"config.optim.b1 must be in \[0, 1\)"),
    ("optim.warmup_steps", -5, "config.optim.warmup_steps must be an integer >= 0"),
    ("eval.split", "valid", r"config.eval.split='valid' is not one of \['train', 'test'\]"),
    ("train.sample_steps", 0, "config.train.sample_steps must be an integer >= 1"),
    ("optim.learning_rate", float("nan"), "config.optim.learning_rate must be a finite number"),
    ("seed", -1, r"config.seed must be in \[0, 2\*\*32 - 2\)"),
  ],
)
def test_bad_values_fail_before_the_workdir_is_touched(data_dir, tmp_path, field, value, message):
  c = tiny_config(data_dir)
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


_NAN, _INF = float("nan"), float("inf")
# (field, bad value, the expected message): every numeric field refuses NaN and infinity.
_NON_FINITE = [
  *[
    (f"optim.{name}", value, rf"config.optim.{name} must be a finite number > 0, got {value}\.")
    for name in ("learning_rate", "eps")
    for value in (_NAN, _INF)
  ],
  *[
    (f"optim.{name}", value, rf"config.optim.{name} must be a finite number >= 0, got {value}\.")
    for name in ("weight_decay", "grad_clip")
    for value in (_NAN, _INF)
  ],
  *[
    (field, value, rf"config.{field} must be in \[0, 1\), got {value}\.")
    for field in ("optim.b1", "optim.b2", "optim.ema_decay", "model.dropout", "loss.time_decay")
    for value in (_NAN, _INF, -_INF)
  ],
  *[
    (f"schedule.{name}", value, rf"config.schedule.{name} must be a finite number, got {value}\.")
    for name in ("gamma_min", "gamma_max")
    for value in (_NAN, _INF, -_INF)
  ],
  ("optim.learning_rate", -_INF, r"must be a finite number > 0, got -inf\."),
  ("optim.learning_rate", 0.0, r"must be a finite number > 0, got 0\.0\."),
  ("optim.grad_clip", -1.0, r"config.optim.grad_clip must be a finite number >= 0, got -1\.0\."),
]
# Counts: integers >= 1 (>= 0 where zero means "none"); no bools, no floats.
_COUNTS = [
  *[
    (field, value, rf"config.{field} must be an integer >= 1, got {value!r}\.")
    for field in (
      "model.n_layer",
      "model.n_embd",
      "model.mlp_hidden",
      "model.mlp_layers",
      "model.vae_latent_dim",
      "model.vae_hidden",
      "model.vae_layers",
      "model.adaptive_latent_dim",
      "model.adaptive_hidden",
      "loss.vae_num_samples",
      "loss.time_bins",
      "train.batch_size",
      "train.num_steps",
      "train.eval_every",
      "train.fsdp_min_size",
      "eval.batch_size",
    )
    for value in (0, -3)
  ],
  ("loss.num_steps", -1, r"config.loss.num_steps must be an integer >= 0, got -1\."),
  ("optim.warmup_steps", True, r"config.optim.warmup_steps must be an integer >= 0, got True\."),
  ("train.num_samples", -1, r"config.train.num_samples must be an integer >= 0, got -1\."),
]


@pytest.mark.parametrize(
  "field, value, message",
  _NON_FINITE + _COUNTS,
  ids=[f"{f}={v!r}" for f, v, _ in _NON_FINITE + _COUNTS],
)
def test_numeric_fields_refuse_non_finite_values_and_bad_counts(data_dir, field, value, message):
  """Validation alone (no training): NaN compares False with everything, so a bare range
  test let it through (a NaN learning rate trained nothing, a NaN grad_clip turned clipping
  off); infinity passed "> 0". The message names the field and the value."""
  c = tiny_config(data_dir)
  section, _, name = field.rpartition(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_non_integer_counts_are_refused(data_dir):
  """A config file may build its own ConfigDict, where a count can be a float."""
  c = tiny_config(data_dir)
  c.model = ml_collections.ConfigDict(dict(c.model.to_dict(), n_layer=2.5))
  with pytest.raises(ValueError, match=r"config.model.n_layer must be an integer >= 1, got 2\.5\."):
    config_lib.validate(c)
  config_lib.validate(tiny_config(data_dir))  # the defaults pass


# Finite in Python but not in the float32 computation (1e39 is inf there, 1e-50 is 0), counts
# beyond int32, schedule end points whose exp overflows float32, a batch larger than the
# train split: all refused by validation, naming the field, the value and the limit.
_OUT_OF_RANGE = [
  ("optim.learning_rate", 1e39, r"config.optim.learning_rate=1e\+39 is beyond the float32 range"),
  ("optim.weight_decay", 3.5e38, r"config.optim.weight_decay=3.5e\+38 is beyond the float32"),
  ("optim.grad_clip", 1e300, r"config.optim.grad_clip=1e\+300 is beyond the float32 range"),
  (
    "optim.eps",
    1e-50,
    r"config.optim.eps=1e-50 is below the smallest normal float32 \(1.175e-38\)",
  ),
  ("optim.learning_rate", 1e-40, r"config.optim.learning_rate=1e-40 is below the smallest normal"),
  ("schedule.gamma_max", 1e39, r"config.schedule.gamma_max=1e\+39 is beyond the float32 range"),
  ("schedule.gamma_max", 100.0, r"config.schedule.gamma_max=100.0 is outside \[-88.72, 88.72\]"),
  ("schedule.gamma_min", -89.0, r"config.schedule.gamma_min=-89.0 is outside \[-88.72, 88.72\]"),
  ("train.num_steps", 2**31, r"config.train.num_steps=2147483648 is beyond the int32 counts"),
  ("model.n_embd", 10**20, r"config.model.n_embd=100000000000000000000 is beyond the int32"),
  (
    "train.batch_size",
    1_000_000,
    r"config.train.batch_size=1000000 is larger than the train split of 'digits' \(1497 "
    r"examples\) 668 times over: each step would see every example that often, at that cost "
    r"in time and memory. Use a batch of at most 1497 \(the usual sizes are 32-512; at most "
    r"23952 is accepted\)",
  ),
]


@pytest.mark.parametrize(
  "field, value, message", _OUT_OF_RANGE, ids=[f"{f}={v!r}" for f, v, _ in _OUT_OF_RANGE]
)
def test_numbers_beyond_float32_int32_or_the_data_are_refused(data_dir, field, value, message):
  c = tiny_config(data_dir)
  section, _, name = field.rpartition(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)
    config_lib.check_training_batch(c)


def test_the_limits_themselves_pass(data_dir):
  c = tiny_config(data_dir)
  c.optim.learning_rate, c.optim.eps, c.optim.weight_decay = 3e38, 1.2e-38, 0.0
  c.schedule.gamma_min, c.schedule.gamma_max = -88.7, 88.7
  c.train.batch_size, c.train.num_steps = 16 * 1497, 2**31 - 1
  config_lib.validate(c)
  config_lib.check_training_batch(c)
  c.train.batch_size = 16 * 1497 + 8  # evaluation and sampling do not check the train batch
  config_lib.validate(c)


def test_an_overflowing_update_saves_nothing_and_stops(data_dir, tmp_path):
  # A learning rate near float32's largest number with weight decay 1 makes step 2's update
  # overflow (3.4e38 * (1 + p) is inf for p > 0; step 1's learning rate is 0, the start of
  # the warm-up) while its loss and gradient norm are finite. (The soak used 1e39, now
  # refused by validation.) Such a run used to save the NaN parameters, then stop at the
  # next step's NaN loss saying "the latest checkpoint, step 2, is before it".
  run = tmp_path / "run"
  proc = run_script(
    "train.py",
    f"--workdir={run}",
    f"--config.data.data_dir={data_dir}",
    "--config.optim.learning_rate=3.4e38",
    "--config.optim.weight_decay=1.0",
    "--config.optim.warmup_steps=0",
    "--config.train.num_steps=2",
    "--config.train.ckpt_every=1",
    "--config.train.num_samples=0",
    tiny=True,
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  error = proc.stderr.strip().splitlines()[-1]
  assert error.startswith("error: Training diverged at step 2: its loss and gradient norm were ")
  assert "non-finite values (in " in error and "params" in error, error
  assert "Nothing was saved for step 2; " in error and "step 1" in error, error
  assert "--config.optim.learning_rate" in error and "Traceback" not in proc.stderr
  assert (run / "checkpoints" / "1").is_dir()  # the last finite state
  assert not (run / "checkpoints" / "2").exists() and not (run / "final_metrics.json").exists()


@pytest.mark.slow  # trains and resumes runs: a minute or more under load
def test_diverged_parameters_are_not_evaluated_as_valid_and_the_resume_tells_the_truth(
  data_dir, tmp_path
):
  # The reproducer: learning rate 1e30 from step 2 (warm-up from 0 at step 1). The
  # state after step 2 is finite (|params| ~1e30, EMA ~1e25) but its ELBO is NaN: the run
  # used to write bits/dim NaN to final_metrics.json and exit 0.
  run = tmp_path / "run"
  c = tiny_config(data_dir, num_steps=2, ckpt_every=1, log_every=1)
  c.optim.learning_rate, c.optim.warmup_steps = 1e30, 0
  with pytest.raises(bpd.NonFiniteEvaluationError) as failed:
    training.train_and_evaluate(c, str(run))
  message = str(failed.value)
  assert message.startswith("The final evaluation at step 2 (test split) gave bits/dim nan: ")
  assert "are finite but give a non-finite ELBO: training diverged" in message
  assert (
    "final_metrics.json holds the train section only (eval null). Checkpoint step 2 " in message
  )
  assert f"move {run}/checkpoints/2 aside to resume from step 1, the one before it" in message
  text = (run / "final_metrics.json").read_text()
  final = json.loads(text)
  assert final["step"] == 2 and final["eval"] is None and final["train"] and "NaN" not in text
  rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["kind"] for r in rows] == ["train", "train"]
  # The same checkpoint through `vdm-evaluate`'s function: an error, nothing written.
  output = tmp_path / "eval" / "e.json"
  with pytest.raises(bpd.NonFiniteEvaluationError, match=r"^Checkpoint step 2 of .* nan: "):
    report.evaluate_checkpoint(evaluation.load_run(str(run), config=c), output=str(output))
  assert not output.parent.exists()

  # A resume from checkpoint 2 with a sane learning rate: step 3's loss is computed from
  # checkpoint 2's parameters. It used to say "the latest checkpoint, step 2, is before it".
  c.train.num_steps, c.optim.learning_rate = 4, 2e-3
  with pytest.raises(training.NonFiniteLossError) as failed:
    training.train_and_evaluate(c, str(run))
  message = str(failed.value)
  assert re.match(
    r"Loss became (nan|-?inf) at step 3 \(first non-finite step in 3\.\.3\); "
    "nothing after step 2 was saved: the latest checkpoint, step 2 ",
    message,
  )
  assert "holds the parameters that gave it, so a rerun resuming from it meets it again" in message
  assert "move" in message and "aside to resume from step 1" in message
  # Doing what it says works.
  shutil.move(run / "checkpoints" / "2", tmp_path / "aside")
  out = training.train_and_evaluate(c, str(run))
  assert out["step"] == 4 and 0 < out["eval"]["bpd"] < 30


def test_stale_lock_is_taken_over(data_dir, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / ".lock").write_text("pid 999999 on host gone")  # left by a killed run: no flock
  assert training.train_and_evaluate(tiny_config(data_dir, num_steps=3), str(run))["step"] == 3


def test_failed_async_save_is_reported_clearly(tmp_path):
  from vdm_jax.training.saver import Saver

  class Manager:
    directory = str(tmp_path / "checkpoints")

    def wait_until_finished(self):
      raise OSError(28, "No space left on device")

    def reload(self):
      pass

    def all_steps(self):
      return [20, 25]

  with pytest.raises(training.CheckpointSaveError, match="step 25 .* No space left on device"):
    Saver(Manager(), last_saved=25).wait()


def test_checked_mode_of_the_pure_terms():
  k = jnp.array([[0, 17]])
  z = jnp.zeros((1, 2))
  assert np.isnan(
    elbo.reconstruction_loss(k, z, -5.0, vocab_size=17)
  ).all()  # unchecked: fast, silent
  with pytest.raises(Exception, match=r"must hold integers in \[0, 16\].*\[0, 17\]"):
    elbo.reconstruction_loss(k, z, -5.0, vocab_size=17, validate=True)
  checked = checkify.checkify(
    jax.jit(lambda k: elbo.reconstruction_loss(k, z, -5.0, vocab_size=17, validate=True))
  )
  assert "got values in [-1, -1]" in checked(k * 0 - 1)[0].get()
  assert checked(k * 0)[0].get() is None
  e = jnp.zeros((2, 3))
  with pytest.raises(Exception, match="gamma_s must be below gamma_t"):
    elbo.diffusion_loss_discrete(
      e, e + 1, jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), num_steps=10, validate=True
    )


def test_sample_cli_rejects_a_bad_number_of_samples(tmp_path):
  proc = run_script(
    "sample.py",
    f"--workdir={tmp_path}",
    "--num_samples=0",
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode != 0 and "--num_samples must be an integer >= 1" in proc.stderr


def test_checksums_follow_the_kept_checkpoints(data_dir, tmp_path):
  c = tiny_config(data_dir, num_steps=15, max_to_keep=2)  # saves 3, 6, ..., 15; keeps 2
  training.train_and_evaluate(c, str(tmp_path))
  kept = {p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()}
  recorded = {p.name.removesuffix(".json") for p in (tmp_path / "checksums").iterdir()}
  assert kept == {"12", "15"} and kept <= recorded and not recorded & {"3", "6"}, recorded


def test_strict_json_maps_non_finite_numbers_to_null():
  """`workdir.dumps_strict` never writes NaN or Infinity (strict JSON has neither): every
  non-finite float, numpy and JAX scalars and arrays included, becomes null, at any depth."""
  value = {
    "nan": float("nan"),
    "inf": float("inf"),
    "-inf": float("-inf"),
    "f32": np.float32("nan"),
    "f64": np.float64(1.5),
    "int": np.int64(3),
    "bool": np.bool_(True),
    "jax": jnp.array([1.0, jnp.inf]),
    "nested": [{"a": (float("nan"), 2)}, [np.array([[-np.inf]])]],
    "plain": [None, "NaN", 0, False, 2.5],
  }
  expected = {
    "nan": None,
    "inf": None,
    "-inf": None,
    "f32": None,
    "f64": 1.5,
    "int": 3,
    "bool": True,
    "jax": [1.0, None],
    "nested": [{"a": [None, 2]}, [[[None]]]],
    "plain": [None, "NaN", 0, False, 2.5],
  }
  assert workdir.to_strict_json(value) == expected
  text = workdir.dumps_strict(value, indent=2)
  assert json.loads(text, parse_constant=lambda name: pytest.fail(f"wrote {name}")) == expected
  assert type(workdir.to_strict_json(np.float64(1.5))) is float
  with pytest.raises(TypeError):
    workdir.dumps_strict({"x": object()})  # not JSON at all: still an error
