"""Training options for accelerators: gradient accumulation, device prefetch, the profiler."""

import itertools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import devices_flags, tiny_config

from vdm_jax import config as config_lib
from vdm_jax import data, models, training
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.runtime import workdir as workdir_lib
from vdm_jax.training import step as step_lib

TESTS = pathlib.Path(__file__).parent


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


class _PerExampleDraws:
  """A model whose random draws (time, noise, dropout) are made per example, from a key that
  depends only on the example: its per-example losses do not depend on how the batch is cut,
  so one step on the whole batch and one on its micro-batches must agree."""

  def __init__(self, model):
    self._model = model

  def __getattr__(self, name):
    return getattr(self._model, name)

  def loss_terms(self, params, batch, key, *, train=False, t=None, t_weight=None):
    del key  # the draws come from the example itself
    k = batch["image"]
    codes = jnp.arange(k[0].size, dtype=jnp.int32).reshape(k.shape[1:]) + 1
    keys = jax.vmap(lambda x: jax.random.fold_in(jax.random.key(7), jnp.sum(x * codes)))(k)

    def one(example, key, t, w):
      options = {} if t is None else {"t": t[None], "t_weight": w[None]}
      example = jax.tree.map(lambda v: v[None], example)
      terms = self._model.loss_terms(params, example, key, train=train, **options)
      return jax.tree.map(lambda v: v[0], terms)

    if t is None:
      return jax.vmap(lambda x, key: one(x, key, None, None))(batch, keys)
    return jax.vmap(one)(batch, keys, t, t_weight)


def _toy_config(data_dir, **train_overrides):
  """toy2d with a small MLP denoiser: the cheapest train step to compile (the step's logic
  does not depend on the denoiser)."""
  c = tiny_config(data_dir, **train_overrides)
  c.data.name, c.model.denoiser, c.model.mlp_hidden, c.model.mlp_layers = "toy2d", "mlp", 32, 2
  return c


def _setup(data_dir, time_sampling="uniform", batch_size=16):
  c = _toy_config(data_dir, batch_size=batch_size)
  c.loss.time_sampling = time_sampling
  model = models.make_model(c, data.static_info(c.data))
  # Clipping (of the accumulated gradient) and AdamW at a constant rate: the project's
  # warm-up would make the first update zero.
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.01))
  state = training.create_train_state(model, jax.random.key(0), tx, c)
  rng = np.random.default_rng(1)
  images = rng.integers(0, model.vocab_size, (batch_size, *model.data_shape), dtype=np.int32)
  return c, model, state, {"image": jnp.asarray(images)}


def _step(model, c, accum):
  c = c.copy_and_resolve_references()
  c.train.grad_accum_steps = accum
  return jax.jit(lambda s, b, k: step_lib.train_step(s, b, k, model=model, config=c))


def _assert_trees_close(a, b, rtol=2e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_accumulated_step_equals_one_big_batch_step(data_dir):
  """With importance-sampled times (drawn for the whole batch, the moments updated with
  every micro-batch's losses); `t` drawn by the model is checked by the next test."""
  c, model, state, batch = _setup(data_dir, "importance")
  model = _PerExampleDraws(model)
  key = jax.random.key(3)
  whole, m1 = _step(model, c, 1)(state, batch, key)
  accumulated, m4 = _step(model, c, 4)(state, batch, key)
  # The update moved the params well beyond the tolerance, and both moved them the same way.
  moved = jax.tree.leaves(
    jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), whole.params, state.params)
  )
  assert max(float(x) for x in moved) > 1e-4
  _assert_trees_close(whole.params, accumulated.params)
  _assert_trees_close(whole.ema_params, accumulated.ema_params)
  _assert_trees_close(whole.opt_state, accumulated.opt_state)
  assert int(np.sum(whole.time_moments["seen"])) > 4
  _assert_trees_close(whole.time_moments, accumulated.time_moments)
  assert m1.keys() == m4.keys()
  _assert_trees_close(m1, m4, atol=1e-5)  # bits/dim; the prior term ~4e-4 is cancellation noise


def test_micro_batches_are_strided_rows():
  """Micro-batch i is rows i, i + k, ... (so rows split over devices stay on them); merging
  undoes it. The update on them equals the whole batch's (test above)."""
  batch = jnp.arange(24).reshape(12, 2)
  parts = step_lib.micro_batches(batch, 4)
  assert parts.shape == (4, 3, 2)
  np.testing.assert_array_equal(parts[1], batch[1::4])
  np.testing.assert_array_equal(step_lib.merge_micro_batches(parts), batch)


_ACCUMULATED_STEP = """
import sys, numpy as np, jax
sys.path.insert(0, {tests!r})
import test_train_options as T
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.training.step import jit_train_step
c, model, state, batch = T._setup({data_dir!r}, "importance")
c.train.grad_accum_steps = 2
mesh = mesh_lib.make_mesh()
fn = jit_train_step(model, c, mesh, jax.tree.map(lambda _: mesh_lib.replicated(mesh), state))
batch = mesh_lib.to_global({{"image": np.asarray(batch["image"])}}, mesh)
hlo = fn.lower(state, batch, jax.random.key(3)).compile().as_text()
print("moves", hlo.count("all-to-all") + hlo.count("collective-permute") + hlo.count("all-gather"))
state, _ = fn(state, batch, jax.random.key(3))
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(state.params)])
"""


def test_accumulation_on_four_devices_matches_one_and_moves_no_rows(data_dir, tmp_path):
  """The strided micro-batches of a batch split over the devices stay where they are."""
  params = {}
  for n in [1, 4]:
    env = dict(os.environ, XLA_FLAGS=devices_flags(n))
    out = tmp_path / f"p{n}.npz"
    code = _ACCUMULATED_STEP.format(tests=str(TESTS), data_dir=str(data_dir), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "moves 0" in proc.stdout
    params[n] = np.load(out)
  for name in params[1].files:
    np.testing.assert_allclose(params[1][name], params[4][name], rtol=1e-5, atol=1e-7)


def test_bad_grad_accum_steps_and_profile_steps_are_refused(data_dir):
  for value, message in [
    (0, "grad_accum_steps must be an integer >= 1, got 0"),
    (-2, "grad_accum_steps must be an integer >= 1, got -2"),
    (3, r"grad_accum_steps \(3\) must divide config.train.batch_size \(32\)"),
  ]:
    with pytest.raises(ValueError, match=message):
      config_lib.validate(tiny_config(data_dir, grad_accum_steps=value))
  for value in ["3", "3,2", "2,2", "0,2", "a,b", "1,2,3", "1.5,3"]:
    with pytest.raises(ValueError, match=rf"profile_steps='{value}' must be two step numbers"):
      config_lib.validate(tiny_config(data_dir, profile_steps=value))
  with pytest.raises(ValueError, match="prefetch must be an integer >= 0"):
    config_lib.validate(tiny_config(data_dir, prefetch=-1))
  c = tiny_config(data_dir, grad_accum_steps=4, profile_steps=" 2, 5")
  config_lib.validate(c)
  assert config_lib.profile_steps(c) == (2, 5)


def test_micro_batches_must_split_over_the_devices(monkeypatch):
  monkeypatch.setattr(mesh_lib.jax, "device_count", lambda: 8)
  mesh_lib.check_batch_size(64, micro_batches=8)
  with pytest.raises(
    ValueError,
    match=r"batch_size \(32\) / config.train.grad_accum_steps \(8\) must be divisible by the "
    r"number of devices \(8\); try config.train.batch_size=64",
  ):
    mesh_lib.check_batch_size(32, micro_batches=8)


def test_prefetch_yields_the_same_batches_in_order(data_dir):
  c = tiny_config(data_dir)
  data.prepare(c.data)
  mesh = mesh_lib.make_mesh()

  def batches():
    return data.make_train_iterator(c.data, global_batch_size=8, seed=0, start_step=3)

  plain = [mesh_lib.to_global(b, mesh) for b in itertools.islice(batches(), 5)]
  for size in [0, 1, 2, 3]:
    got = list(itertools.islice(mesh_lib.prefetch_to_mesh(batches(), mesh, size=size), 5))
    assert len(got) == 5
    for a, b in zip(plain, got, strict=True):
      assert b["image"].sharding == mesh_lib.batch_sharding(mesh)
      np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))

  # It reads at most `size` batches ahead, and ends with a finite iterator.
  read = []

  def counted(n):
    for i in range(n):
      read.append(i)
      yield {"image": np.full((8, 2), i, np.int32)}

  stream = mesh_lib.prefetch_to_mesh(counted(4), mesh, size=2)
  assert int(next(stream)["image"][0, 0]) == 0 and len(read) == 3
  assert [int(b["image"][0, 0]) for b in stream] == [1, 2, 3] and len(read) == 4


def test_profile_trace_and_accumulation_in_a_run(data_dir, tmp_path):
  c = _toy_config(data_dir, num_steps=3, log_every=1, grad_accum_steps=2, profile_steps="2,3")
  out = training.train_and_evaluate(c, str(tmp_path))
  assert out["step"] == 3 and np.isfinite(out["eval"]["bpd"])
  log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(r["loss_bpd"]) for r in log if r["kind"] == "train")
  traces = list((tmp_path / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  # A resume may change the profiled steps, not the accumulation (it changes the draws).
  resumed = _toy_config(data_dir, num_steps=3, log_every=1, grad_accum_steps=2, profile_steps="")
  assert workdir_lib.check_resume_config(resumed, str(tmp_path), 3) == {
    "train.profile_steps": ("2,3", "")
  }
  resumed.train.grad_accum_steps = 4
  with pytest.raises(ValueError, match=r"config.train.grad_accum_steps: 2 -> 4"):
    workdir_lib.check_resume_config(resumed, str(tmp_path), 3)
