"""The adaptive per-dimension schedule model (`models.AdaptiveVDM`): its schedule, its ELBO
terms against independent routes, its sampler and likelihoods, and the common commands."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, tiny_config

from vdm_jax import config as config_lib
from vdm_jax import data, elbo, gaussian, models, training
from vdm_jax.config import sibling_config
from vdm_jax.evaluation import bpd, ode
from vdm_jax.runtime import inference


def _model(denoiser="unet"):
  c = tiny_config("/tmp/unused")
  c.model.kind = "adaptive"
  c.model.adaptive_latent_dim, c.model.adaptive_hidden = 3, 16
  if denoiser == "mlp":
    c.data.name, c.model.denoiser, c.model.mlp_hidden, c.model.mlp_layers = "toy2d", "mlp", 32, 1
  return models.make_model(c, data.dataset_info(c.data))


MODEL = _model("mlp")  # toy2d: data [2], V = 256; cheap to compile


def _perturbed_params(key):
  """Params with the schedule's and denoiser's zero-initialised layers made non-zero, so
  that the schedule differs between dimensions and examples."""
  params = MODEL.init(key)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
  leaves = [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
  return jax.tree.unflatten(tree, leaves)


PARAMS = _perturbed_params(jax.random.key(0))
K = jax.random.randint(jax.random.key(1), (3, 2), 0, 256)
V, DIMS = 256, 2


def test_schedule_is_per_dimension_monotone_with_fixed_end_points():
  c = jax.random.normal(jax.random.key(2), (3, MODEL.latent_dim))
  t = jnp.linspace(0.0, 1.0, 21)
  gammas = jax.vmap(lambda u: MODEL.gamma_map(PARAMS, c, u)[0])(t)  # [21, 3, 2]
  np.testing.assert_allclose(gammas[0], -13.3, atol=1e-5)
  np.testing.assert_allclose(gammas[-1], 5.0, atol=1e-4)
  assert np.all(np.diff(np.asarray(gammas), axis=0) > 0)
  mid = np.asarray(gammas[10])
  assert mid.std() > 0.1  # differs between pixels and examples
  assert np.abs(mid[0] - mid[1]).max() > 0.1
  # The closed-form gamma' is the derivative of gamma (autodiff through the formula).
  t3 = jnp.array([0.1, 0.5, 0.9])
  (_, dg), (jvp, _) = jax.jvp(lambda u: MODEL.gamma_map(PARAMS, c, u), (t3,), (jnp.ones(3),))
  np.testing.assert_allclose(dg, jvp, rtol=1e-4)
  # A fresh model starts on the linear schedule for every c.
  fresh = MODEL.init(jax.random.key(3))
  np.testing.assert_allclose(MODEL.gamma_map(fresh, c, 0.25)[0], -13.3 + 18.3 * 0.25, atol=1e-3)


def test_loss_terms_sum_and_match_their_definitions():
  key = jax.random.key(4)
  terms = jax.jit(lambda p, k: MODEL.loss_terms(p, k, key))(PARAMS, K)
  total = terms["recon"] + terms["prior"] + terms["diffusion"] + terms["latent_kl"]
  np.testing.assert_allclose(terms["total"], total, rtol=1e-6)
  np.testing.assert_allclose(terms["bpd"], total / (DIMS * math.log(2)), rtol=1e-6)
  # The latent's KL: closed form between diagonal Gaussians, float64.
  mean, var = (np.asarray(a, np.float64) for a in MODEL.posterior(PARAMS, elbo.encode(K, V)))
  kl = 0.5 * np.sum(np.square(mean) + var - 1.0 - np.log(var), axis=-1)
  np.testing.assert_allclose(terms["latent_kl"], kl, rtol=1e-5)
  assert np.all(kl > 0.01)
  # The end points do not depend on c: recon and prior are those of the fixed gamma_min,
  # gamma_max with the VDM's pure functions.
  x = elbo.encode(K, V)
  np.testing.assert_allclose(terms["prior"], elbo.prior_loss(x, 5.0), rtol=1e-5)


def test_the_diffusion_term_uses_the_latents_schedule():
  """Recompute the continuous diffusion term by hand from the model's parts, with c drawn
  as loss_terms draws it: a per-dimension sum in float64."""
  key = jax.random.key(5)
  t = jnp.array([0.1, 0.5, 0.9])
  terms = MODEL.loss_terms(PARAMS, K, key, t=t)
  key_c, _, _, key_e, _ = jax.random.split(key, 5)
  x = elbo.encode(K, V)
  mean, var = MODEL.posterior(PARAMS, x)
  c = mean + jnp.sqrt(var) * jax.random.normal(key_c, mean.shape)
  g, dg = MODEL.gamma_map(PARAMS, c, t)
  eps = jax.random.normal(key_e, x.shape)
  eps_hat = MODEL.eps_hat(PARAMS, gaussian.q_sample(x, g, eps), g, latent=c)
  sq = np.square(np.asarray(eps, np.float64) - np.asarray(eps_hat, np.float64))
  want = 0.5 * (np.asarray(dg, np.float64) * sq).reshape(3, -1).sum(-1)
  np.testing.assert_allclose(terms["diffusion"], want, rtol=1e-4)
  # Discrete T: T times the KL between the diagonal posteriors of the sampled step.
  num_steps = 4
  disc = MODEL.loss_terms(PARAMS, K, key, num_steps=num_steps, t=t)
  g_s, _ = MODEL.gamma_map(PARAMS, c, t - 1.0 / num_steps)
  z_t = gaussian.q_sample(x, g, eps)
  x_hat = MODEL.conditioned(c).x_hat(PARAMS, z_t, g)
  mq, vq = gaussian.q_posterior(z_t, x, g_s, g)
  mp, vp = gaussian.q_posterior(z_t, x_hat, g_s, g)
  kl = np.sum(
    0.5 * np.square(np.asarray(mq, np.float64) - np.asarray(mp, np.float64)) / np.asarray(vp),
    axis=-1,
  )
  np.testing.assert_allclose(disc["diffusion"] / num_steps, kl, rtol=2e-3)


def test_gradients_reach_the_encoder_the_schedule_and_the_denoiser():
  loss = lambda p: MODEL.loss_terms(p, K, jax.random.key(6))["total"].mean()
  grads = jax.jit(jax.grad(loss))(PARAMS)
  for part in ("encoder", "schedule", "denoiser"):
    norm = float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads[part]))))
    assert np.isfinite(norm) and norm > 0, (part, norm)


def test_sampling_draws_the_latent_from_its_prior():
  draw = jax.jit(lambda p, key: MODEL.sample(p, key, 6, num_steps=8, method="ddim"))
  k = np.asarray(draw(PARAMS, jax.random.key(7)))
  assert k.shape == (6, 2) and k.dtype == np.int32 and k.min() >= 0 and k.max() < V


def test_exact_time_sum_includes_the_latent_kl():
  batch = {"image": K, "index": jnp.arange(3, dtype=jnp.int32)}
  step = jax.jit(
    lambda p, b: bpd.exact_time_sum_step(p, b, jax.random.key(8), model=MODEL, num_steps=4)
  )
  terms, by_step = step(PARAMS, batch)
  assert set(terms) == {"recon", "prior", "diffusion", "latent_kl", "total", "t"}
  parts = sum(terms[n] for n in MODEL.terms)
  np.testing.assert_allclose(terms["total"], parts, rtol=1e-6)
  np.testing.assert_allclose(by_step.sum(0), terms["diffusion"], rtol=1e-6)


@pytest.mark.slow
def test_ode_bits_per_dim_include_the_latent_kl():
  # The ODE: its bits/dim are -log p(k | c) + KL(q(c|k) || p(c)) for one c ~ q(c | k).
  k = K[:2]
  key = jax.random.key(10)
  got = ode.dequantized_bpd(MODEL, PARAMS, k, key, exact_divergence=True, rtol=1e-3, atol=1e-3)
  key_rest, key_c = jax.random.split(key)
  cond, kl = MODEL.condition(PARAMS, k, key_c)
  without = ode.dequantized_bpd(
    cond, PARAMS, k, key_rest, exact_divergence=True, rtol=1e-3, atol=1e-3
  )
  np.testing.assert_allclose(got, without + kl / (2 * math.log(2)), rtol=1e-5)
  assert np.all(np.asarray(kl) > 0)


def test_config_validation():
  config = sibling_config(str(REPO / "configs" / "digits.py"), "digits_adaptive.py")
  assert config.model.kind == "adaptive"
  config_lib.validate(config)
  photos = sibling_config(str(REPO / "configs" / "photos.py"), "photos_adaptive.py")
  config_lib.validate(photos)
  config.model.adaptive_latent_dim = 0
  with pytest.raises(ValueError, match="model.adaptive_latent_dim"):
    config_lib.validate(config)
  config.model.adaptive_latent_dim = 4
  config.schedule.objective = "variance"
  with pytest.raises(ValueError, match="model.kind='adaptive'.*objective='elbo'"):
    config_lib.validate(config)


@pytest.mark.slow
def test_trains_resumes_evaluates_and_samples_with_the_common_commands(tmp_path):
  config = tiny_config(tmp_path / "tfds", num_steps=10, ckpt_every=10, log_every=5)
  config.model.kind = "adaptive"
  config.model.adaptive_latent_dim, config.model.adaptive_hidden = 4, 32
  config.optim.ema_decay = 0.5
  workdir = tmp_path / "run"
  result = training.train_and_evaluate(config, str(workdir))
  assert {"latent_kl_bpd", "diffusion_bpd", "recon_bpd", "prior_bpd"} <= set(result["eval"])
  parts = sum(result["eval"][f"{n}_bpd"] for n in ("recon", "prior", "diffusion", "latent_kl"))
  np.testing.assert_allclose(parts, result["eval"]["bpd"], rtol=1e-6)
  config.train.num_steps = 20  # resume from step 10
  training.train_and_evaluate(config, str(workdir))
  model, _, params, step = inference.load_ema_params(config, str(workdir))
  assert step == 20 and isinstance(model, models.AdaptiveVDM)

  out = tmp_path / "eval.json"
  base = [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"--workdir={workdir}"]
  flags = ["--num_steps=8", "--exact_time_sum"]
  proc = subprocess.run([*base, f"--output={out}", *flags], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(out.read_text())
  assert got["model"] == "adaptive" and "latent_kl_bpd" in got and got["checkpoint_step"] == 20
  proc = subprocess.run(
    [sys.executable, str(REPO / "scripts" / "sample.py"), f"--workdir={workdir}",
     "--num_samples=4", "--num_steps=10", f"--output={tmp_path / 's.png'}"],
    capture_output=True, text=True,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-3000:]
