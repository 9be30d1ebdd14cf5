"""Checkpoints of google-research/vdm: imported, they compute what the reference computed.

The fixtures (tests/fixtures/vdm_reference/, README there) were written once by the
reference's own code, in its on-disk format, with the reference's outputs on them: gamma(t)
on a grid, eps_hat at fixed z and gamma_t, and the three loss terms of its `VDM.__call__`
with its random draws recorded. No test needs the reference or the internet.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest

from vdm_jax import config as config_lib
from vdm_jax import elbo, gaussian
from vdm_jax.evaluation import checkpoint_samples, report, runs
from vdm_jax.training import reference_checkpoint

REPO = pathlib.Path(__file__).parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "vdm_reference"
KINDS = {
  "learnable_scalar": "learned_linear",
  "learnable_nnet": "vdm_reference_nnet",
  "fixed": "linear",
}


def cifar10_config(data_dir, **model):
  """The packaged cifar10 config (the importer's default) with the fixtures' 4 GroupNorm groups."""
  config = config_lib.sibling_config(str(REPO / "configs" / "cifar10.py"), "cifar10.py")
  config.model.norm_groups = 4  # the fixtures' (README); the reference's default is 32
  config.data.data_dir = str(data_dir)
  for name, value in model.items():
    config.model[name] = value
  return config


def reference(gamma_type):
  outputs = np.load(FIXTURES / gamma_type / "reference_outputs.npz")
  meta = json.loads((FIXTURES / gamma_type / "reference_config.json").read_text())
  return outputs, meta


def import_fixture(tmp_path, gamma_type, config=None):
  config = config or cifar10_config(tmp_path / "no_data")
  workdir = tmp_path / f"run_{gamma_type}"
  summary = reference_checkpoint.import_checkpoint(FIXTURES / gamma_type, str(workdir), config)
  return summary, workdir


def _files(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("gamma_type", list(KINDS))
def test_imported_model_computes_the_reference_outputs(tmp_path, gamma_type):
  ref, meta = reference(gamma_type)
  summary, workdir = import_fixture(tmp_path, gamma_type)
  assert summary["step"] == meta["step"] == 2 and summary["gamma_type"] == gamma_type
  run = runs.load_run(workdir, prepare_data=False)  # cifar10 is not prepared here
  c = run.config
  assert run.step == 2 and (c.model.denoiser, c.schedule.kind) == (
    "vdm_reference",
    KINDS[gamma_type],
  )
  assert (c.model.n_layer, c.model.n_embd) == (
    meta["model"]["sm_n_layer"],
    meta["model"]["sm_n_embd"],
  )
  assert c.model.fourier_features and c.model.attention_everywhere
  model, params = run.model, run.params

  # The fixture is a real test: the network's output is not its base measure z, and the
  # EMA parameters (which the importer must take) differ from the raw ones.
  assert np.max(np.abs(ref["eps_hat"] - ref["z"])) > 0.5
  with open(FIXTURES / gamma_type / "ckpt-1.flax", "rb") as f:
    state = flax.serialization.msgpack_restore(f.read())
  gap = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), state["params"], state["ema_params"])
  assert min(jax.tree.leaves(gap)) > 1e-3

  # gamma(t) and gamma'(t) on a grid; eps_hat at fixed z, gamma_t (float32: equal to rounding).
  gamma, dgamma = model.gamma_and_derivative(params, jnp.asarray(ref["t_grid"]))
  np.testing.assert_allclose(gamma, ref["gamma_grid"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(dgamma, ref["dgamma_grid"], rtol=1e-5)
  eps_hat = model.eps_hat(params, jnp.asarray(ref["z"]), jnp.asarray(ref["gamma_t"]))
  np.testing.assert_allclose(eps_hat, ref["eps_hat"], rtol=1e-5, atol=1e-5)

  # The loss terms of the reference's VDM.__call__, from this project's ELBO functions with
  # the reference's draws (eps_0, t, eps).
  k = jnp.asarray(ref["images"], jnp.int32)
  x = elbo.encode(k, 256)
  g0, g1 = model.gamma(params, jnp.zeros(())), model.gamma(params, jnp.ones(()))
  recon = elbo.reconstruction_loss(k, gaussian.q_sample(x, g0, jnp.asarray(ref["eps_0"])), g0)
  # z_0 = alpha_0 x + sigma_0 eps_0 carries float32 rounding of ~6e-8 on values of ~1, which
  # the decoder divides by sigma_0 ~ 1e-3 (the reference forms z_0 / alpha_0 directly).
  np.testing.assert_allclose(recon, ref["loss_recon"], rtol=3e-4)
  np.testing.assert_allclose(elbo.prior_loss(x, g1), ref["loss_klz"], rtol=5e-5)
  t, eps = jnp.asarray(ref["t"]), jnp.asarray(ref["eps"])
  g_t, dg_t = model.gamma_and_derivative(params, t)
  var = jax.nn.sigmoid(g_t)[:, None, None, None]
  z_ref = jnp.sqrt(1.0 - var) * x + jnp.sqrt(var) * eps  # z_t as the reference forms it
  diffusion = elbo.diffusion_loss_continuous(eps, model.eps_hat(params, z_ref, g_t), dg_t)
  np.testing.assert_allclose(diffusion, ref["loss_diff"], rtol=1e-5)
  # With this project's z_t the rounding of z_t (~5e-7) meets Fourier features of
  # frequency 2^7 2 pi: a relative difference of ~3e-5, still the same term.
  z_t = gaussian.q_sample(x, g_t, eps)
  ours = elbo.diffusion_loss_continuous(eps, model.eps_hat(params, z_t, g_t), dg_t)
  np.testing.assert_allclose(ours, ref["loss_diff"], rtol=2e-4)

  # The checkpoint holds the EMA parameters as params too, with the integrity records.
  record = json.loads((workdir / "imported_from.json").read_text())
  assert record["step"] == 2 and record["source"].endswith("ckpt-1.flax")
  assert (workdir / "checksums" / "2.json").is_file()
  assert json.loads((workdir / "config.json").read_text())["_format_version"] >= 2


def test_cifar10_absent_is_one_clear_error(tmp_path):
  _, workdir = import_fixture(tmp_path, "learnable_scalar")
  with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
    runs.load_run(workdir)


@pytest.fixture(scope="module")
def rgb_data(tmp_path_factory):
  """A tiny imported 8x8 RGB dataset (V = 256): 2 train and 1 test image."""
  from PIL import Image

  from vdm_jax.data import folder

  root = tmp_path_factory.mktemp("rgb")
  images = root / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"{i}.png")
  folder.import_images(str(images), name="refrgb", data_dir=str(root / "tfds"), resolution=8)
  return str(root / "tfds")


def test_imported_run_evaluates_and_samples(tmp_path, rgb_data):
  config = cifar10_config(rgb_data)
  config.data.name = "refrgb"
  config.eval.batch_size = 4
  _, workdir = import_fixture(tmp_path, "learnable_nnet", config)
  run = runs.load_run(workdir)
  result = report.evaluate_checkpoint(
    run, batch_size=4, num_bins=2, output=str(tmp_path / "e.json")
  )
  assert result["checkpoint_step"] == 2 and result["num_examples"] == 1
  assert 0.0 < result["bpd"] < 16.0
  drawn = checkpoint_samples.sample_checkpoint(
    run, num_samples=2, num_steps=4, output=str(tmp_path / "s")
  )
  assert drawn["paths"] == [str(tmp_path / "s.npz"), str(tmp_path / "s.png")]
  assert "2 samples (ancestral, T=4, step 2)" in checkpoint_samples.render_samples(drawn)
  samples = np.load(drawn["paths"][0])["samples"]
  assert samples.shape == (2, 8, 8, 3) and samples.min() >= 0 and samples.max() <= 255


def test_refusals_name_the_problem_and_write_nothing(tmp_path):
  config = cifar10_config(tmp_path / "no_data")
  source = tmp_path / "source"
  shutil.copytree(FIXTURES / "learnable_scalar", source)
  good = (source / "ckpt-1.flax").read_bytes()
  state = flax.serialization.msgpack_restore(good)
  target = tmp_path / "run"

  def refused(path, match, cfg=config):
    before = _files(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=match):
      reference_checkpoint.import_checkpoint(str(path), str(target), cfg)
    assert _files(tmp_path) == before and not target.exists()

  truncated = tmp_path / "truncated" / "ckpt-1.flax"
  truncated.parent.mkdir()
  truncated.write_bytes(good[: len(good) // 2])
  refused(truncated, "truncated")
  foreign = tmp_path / "foreign.flax"
  foreign.write_bytes(msgpack.packb({"model": {"w": [1.0, 2.0]}, "step": 3}))
  refused(foreign, r"no ema_params \(its top level: \['model', 'step'\]\)")
  refused(tmp_path / "nowhere", "No checkpoint")

  extra = jax.tree.map(np.asarray, state)
  extra["ema_params"]["score_model"]["extra_layer"] = {"kernel": np.zeros((3, 3), np.float32)}
  del extra["ema_params"]["score_model"]["dense1"]["bias"]
  (tmp_path / "extra.flax").write_bytes(flax.serialization.msgpack_serialize(extra))
  refused(
    tmp_path / "extra.flax",
    "no place in the model: score_model/extra_layer/kernel; .*lacks: score_model/dense1/bias",
  )
  odd_gamma = jax.tree.map(np.asarray, state)
  odd_gamma["ema_params"]["gamma"] = {"a": np.zeros((1,), np.float32)}
  (tmp_path / "gamma.flax").write_bytes(flax.serialization.msgpack_serialize(odd_gamma))
  refused(tmp_path / "gamma.flax", "no place in the model: gamma/a")

  mnist = cifar10_config(tmp_path / "no_data")
  mnist.data.name = "mnist"
  refused(source, "takes 3 channels but config.data.name='mnist' has 1", mnist)
  refused(source, "divisible", cifar10_config(tmp_path / "no_data", norm_groups=3))

  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "x").write_text("x")
  with pytest.raises(ValueError, match="already exists"):
    reference_checkpoint.import_checkpoint(str(source), str(tmp_path / "busy"), config)

  # The state file names the checkpoint: a newer-looking decoy beside it is not read.
  (source / "ckpt-7.flax").write_bytes(b"not msgpack")
  summary = reference_checkpoint.import_checkpoint(str(source), str(target), config)
  assert summary["source"] == str(source / "ckpt-1.flax")


def test_config_validation_of_the_reference_kinds(tmp_path):
  config = cifar10_config(tmp_path, denoiser="vdm_reference", n_embd=8)
  config.schedule.kind = "vdm_reference_nnet"
  config_lib.validate(config)
  for field, value, match in [
    ("prediction", "v", "predicts eps"),
    ("dtype", "bfloat16", "computes in float32"),
    ("norm_groups", 3, "divisible"),
    ("n_embd", 2, "n_embd >= 4"),
  ]:
    bad = cifar10_config(tmp_path, denoiser="vdm_reference", n_embd=8)
    bad.model[field] = value
    if field == "n_embd":
      bad.model.norm_groups = 1
    with pytest.raises(ValueError, match=match):
      config_lib.validate(bad)
  flat = cifar10_config(tmp_path, denoiser="vdm_reference")
  flat.data.name = "toy2d"
  with pytest.raises(ValueError, match=r"needs image data \[H, W, C\]"):
    config_lib.validate(flat)


@pytest.mark.slow
def test_cli_imports_evaluates_samples_and_resumes(tmp_path, rgb_data):
  """The installed commands on an imported run: import, evaluate, sample, train on."""

  def tool(script, *args):
    command = [sys.executable, str(REPO / "scripts" / f"{script}.py"), *map(str, args)]
    env = dict(os.environ, VDM_JAX_COMPILATION_CACHE_DIR="none")
    return subprocess.run(command, capture_output=True, text=True, env=env)

  work = tmp_path / "run"
  common = ["--config.model.norm_groups=4", "--config.train.batch_size=2"]
  bad = tool(
    "import_vdm_checkpoint", f"--checkpoint={FIXTURES / 'fixed'}", f"--workdir={work}",
    "--config.model.n_layer=3",
  )  # fmt: skip
  assert bad.returncode == 1 and "set by the importer" in bad.stderr and not work.exists()
  made = tool(
    "import_vdm_checkpoint", f"--checkpoint={FIXTURES / 'fixed'}", f"--workdir={work}",
    "--config.data.name=refrgb", f"--config.data.data_dir={rgb_data}", *common,
  )  # fmt: skip
  assert made.returncode == 0, made.stderr[-2000:]
  assert "schedule: fixed -> schedule.kind='linear'" in made.stdout
  evaluated = tool("evaluate", f"--workdir={work}", "--batch_size=4", f"--output={tmp_path}/e.json")
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert json.loads((tmp_path / "e.json").read_text())["checkpoint_step"] == 2
  sampled = tool("sample", f"--workdir={work}", "--num_samples=2", "--num_steps=3")
  assert sampled.returncode == 0, sampled.stderr[-2000:]
  trained = tool(
    "train", f"--config={work}", f"--workdir={work}", "--config.train.num_steps=4",
    "--config.train.ckpt_every=2", "--config.train.eval_every=1000",
    "--config.train.num_samples=0", "--config.eval.batch_size=4",
  )  # fmt: skip
  assert trained.returncode == 0, trained.stderr[-2000:]
  assert "Resumed from" in trained.stdout + trained.stderr
  assert (work / "checkpoints" / "4").is_dir()
  cifar = tool(
    "import_vdm_checkpoint", f"--checkpoint={FIXTURES / 'fixed'}", f"--workdir={tmp_path}/c",
    f"--config.data.data_dir={tmp_path}/none", *common,
  )  # fmt: skip
  assert cifar.returncode == 0 and "tfds build cifar10" in cifar.stdout
  absent = tool("evaluate", f"--workdir={tmp_path}/c")
  assert absent.returncode == 1 and "Traceback" not in absent.stderr
  assert "error:" in absent.stderr and "tfds build cifar10" in absent.stderr


def test_weight_decay_mask_keeps_a_fixed_schedules_empty_params():
  """A fixed schedule has params["schedule"] = {}: the mask keeps it (optax needs the same
  tree), and decays the denoiser's kernels only."""
  from vdm_jax.training.state import weight_decay_mask

  params = {"schedule": {}, "denoiser": {"conv": {"kernel": np.ones(2), "bias": np.ones(2)}}}
  assert weight_decay_mask(params) == {
    "schedule": {},
    "denoiser": {"conv": {"kernel": True, "bias": False}},
  }
  learned = {"schedule": {"w": np.ones(()), "l1": {"kernel": np.ones((1, 1))}}}
  assert weight_decay_mask(learned) == {"schedule": {"w": False, "l1": {"kernel": False}}}


def test_a_conditional_reference_model_is_refused():
  from vdm_jax import data, models

  config = config_lib.base_config()  # digits: labelled, 8x8x1 images
  config.model.denoiser, config.model.conditional = "vdm_reference", True
  with pytest.raises(ValueError, match="'vdm_reference' has none"):
    models.make_model(config, data.dataset_info(config.data))
