"""The trainer on the offline digits data: steps, resume, multi-device equivalence, errors."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import devices_flags, restore_state, run_script, tiny_config

from vdm_jax import training

REPO = pathlib.Path(__file__).parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_short_run_loss_decreases_and_writes_outputs(data_dir, tmp_path):
  c = tiny_config(data_dir, num_steps=60, log_every=10, ckpt_every=30, eval_every=60)
  c.train.num_samples, c.train.sample_steps = 4, 5
  out = training.train_and_evaluate(c, str(tmp_path))
  assert out["step"] == 60
  log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_losses = [r["loss_bpd"] for r in log if r["kind"] == "train"]
  assert len(train_losses) == 6
  assert train_losses[-1] < 0.7 * train_losses[0], train_losses
  ev = out["eval"]
  assert ev["num_examples"] == 300 and np.isfinite(ev["bpd"]) and ev["bpd_se"] > 0
  np.testing.assert_allclose(
    ev["bpd"], ev["recon_bpd"] + ev["prior_bpd"] + ev["diffusion_bpd"], rtol=1e-6
  )
  assert (tmp_path / "samples_00000060.png").exists()
  assert list((tmp_path / "tb").iterdir())
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
    "30",
    "60",
  ]


def test_resume_reaches_the_same_parameters(data_dir, tmp_path):
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  training.train_and_evaluate(tiny_config(data_dir, num_steps=6), str(straight))
  training.train_and_evaluate(tiny_config(data_dir, num_steps=3), str(interrupted))
  out = training.train_and_evaluate(tiny_config(data_dir, num_steps=6), str(interrupted))
  assert out["step"] == 6
  a, b = restore_state(straight, 6), restore_state(interrupted, 6)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # And a run that is already finished does nothing more.
  assert (
    training.train_and_evaluate(tiny_config(data_dir, num_steps=6), str(interrupted))["step"] == 6
  )


_MULTI_DEVICE = """
import sys, json, numpy as np, jax
sys.path.insert(0, {tests!r})
from helpers import restore_state, tiny_config
from vdm_jax import training
c = tiny_config({data_dir!r}, num_steps=3, ckpt_every=3, log_every=1)
training.train_and_evaluate(c, {workdir!r})
state = restore_state({workdir!r}, 3)
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(state["params"])])
print("devices", jax.device_count())
"""


def test_eight_devices_match_one_device(data_dir, tmp_path):
  results = {}
  for n in [1, 8]:
    env = dict(os.environ, XLA_FLAGS=devices_flags(n))
    code = _MULTI_DEVICE.format(
      tests=str(REPO / "tests"),
      data_dir=str(data_dir),
      workdir=str(tmp_path / f"w{n}"),
      out=str(tmp_path / f"p{n}.npz"),
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"devices {n}" in proc.stdout
    results[n] = np.load(tmp_path / f"p{n}.npz")
    log = [json.loads(x) for x in (tmp_path / f"w{n}" / "metrics.jsonl").read_text().splitlines()]
    results[n, "loss"] = [r["loss_bpd"] for r in log if r["kind"] == "train"]
  np.testing.assert_allclose(results[1, "loss"], results[8, "loss"], rtol=2e-5)
  for name in results[1].files:
    np.testing.assert_allclose(results[1][name], results[8][name], rtol=1e-4, atol=1e-6)


def test_bad_config_values_fail_early(data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.schedule.kind = "quadratic"
  with pytest.raises(ValueError, match=r"config.schedule.kind='quadratic' is not one of"):
    training.train_and_evaluate(c, str(tmp_path / "a"))
  c = tiny_config(data_dir)
  c.model.n_embd = 20
  with pytest.raises(
    ValueError, match=r"n_embd \(20\) must be divisible by config.model.norm_groups \(8\)"
  ):
    training.train_and_evaluate(c, str(tmp_path / "b"))


def test_unwritable_workdir_and_missing_data(data_dir, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="is not writable"):
    training.train_and_evaluate(tiny_config(data_dir), str(blocker / "run"))
  c = tiny_config(tmp_path / "empty_tfds")
  c.data.name = "cifar10"
  with pytest.raises((ValueError, FileNotFoundError), match="tfds build cifar10"):
    training.train_and_evaluate(c, str(tmp_path / "run"))


def test_batch_size_must_divide_device_count(tmp_path):
  code = (
    "from vdm_jax.runtime import mesh as mesh_lib\n"
    "try:\n  mesh_lib.check_batch_size(12)\nexcept ValueError as e:\n  print(e)\n"
  )
  env = dict(os.environ, XLA_FLAGS=devices_flags(8))
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert (
    "config.train.batch_size (12) must be divisible by the number of devices (8)" in proc.stdout
  )


def test_cli_rejects_config_typos(tmp_path):
  proc = run_script("train.py", f"--workdir={tmp_path}", "--config.model.gama_min=1")
  assert proc.returncode != 0
  assert "gama_min" in proc.stderr


_SHARDINGS = """
import sys, json, numpy as np, jax
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from vdm_jax import data, models, training
from vdm_jax.runtime import checkpoints, inference
from vdm_jax.runtime import mesh as mesh_lib
emas, sharded = {{}}, {{}}
for kind in ("replicated", "fsdp"):
  c = tiny_config({data_dir!r}, num_steps=3, ckpt_every=3)
  c.train.sharding, c.train.fsdp_min_size = kind, 1024  # the 3x3 convs have 2,304 weights
  training.train_and_evaluate(c, {workdir!r} + kind)
  _, mesh, ema, _ = inference.load_ema_params(c, {workdir!r} + kind)
  emas[kind] = [np.asarray(x) for x in jax.tree.leaves(ema)]
  vdm = models.make_model(c, data.static_info(c.data))
  shapes = jax.eval_shape(lambda k: training.create_train_state(
    vdm, k, training.make_optimizer(c), c), jax.random.key(0))
  shard = mesh_lib.state_shardings(shapes, mesh, kind, min_size=1024)
  leaves = zip(jax.tree.leaves(shapes), jax.tree.leaves(shard))
  sharded[kind] = sum(x.size for x, s in leaves if not s.is_fully_replicated) / sum(
    x.size for x in jax.tree.leaves(shapes))
for a, b in zip(emas["replicated"], emas["fsdp"]):
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("SHARDED", json.dumps(sharded))
"""


def test_fully_sharded_state_trains_like_replicated(data_dir, tmp_path):
  env = dict(os.environ, XLA_FLAGS=devices_flags(8))
  code = _SHARDINGS.format(
    tests=str(REPO / "tests"), data_dir=str(data_dir), workdir=str(tmp_path / "w_")
  )
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  sharded = json.loads(proc.stdout.split("SHARDED ")[1])
  assert sharded["replicated"] == 0 and sharded["fsdp"] > 0.5, sharded
