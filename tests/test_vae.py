"""The derivation's Gaussian VAE: the pure `vae_elbo` against quadrature, and the model end to end.

With a one-dimensional latent every expectation over q(z|x) is a Gauss-Hermite
quadrature, and log p(x) = log int p(x|z) p(z) dz is one too, which gives routes
independent of the Monte Carlo estimator: the reconstruction term, its reparameterised
gradient, and the identity -ELBO = -log p(x) + KL(q(z|x) || p(z|x)).
"""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from vdm_jax import elbo, gaussian, training, vae_elbo
from vdm_jax.config import sibling_config
from vdm_jax.evaluation import ode
from vdm_jax.runtime import inference

REPO = __import__("pathlib").Path(__file__).parents[1]

# Toy decoder: z [B, 1] -> logits [B, 3, V] over V = 5 levels of 3 dimensions.
V = 5
W = jnp.array(
  [[0.7, -1.2, 0.3, 2.0, -0.5], [1.5, 0.2, -0.9, 0.1, 0.4], [-0.3, 0.8, 1.1, -2.0, 0.6]]
)
C = jnp.array([[0.1, 0.0, -0.4, 0.3, 0.2], [-0.2, 0.5, 0.0, 0.1, -0.3], [0.0, 0.2, 0.1, -0.1, 0.4]])


def decode(z):
  return z[:, :, None] * W[None] + jnp.sin(2.0 * z)[:, :, None] * C[None]


K = jnp.array([[0, 3, 4], [2, 1, 0]])  # two examples
MEAN = jnp.array([[0.4], [-1.1]])
LOG_VAR = jnp.array([[-1.3], [0.2]])


def _quadrature(fn, mean, log_var, n=80):
  """E_{z ~ N(mean, exp(log_var))}[fn(z)] per example, fn: [B, 1] -> [B]."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(n)
  weights = weights / weights.sum()
  z = mean[None] + jnp.exp(0.5 * log_var)[None] * jnp.asarray(nodes, jnp.float32)[:, None, None]
  return jnp.tensordot(jnp.asarray(weights, jnp.float32), jax.vmap(fn)(z), axes=1)


def _nll(z):
  return elbo.categorical_nll(K, decode(z))


def test_reconstruction_and_kl_match_quadrature_and_closed_form():
  terms = vae_elbo.vae_elbo(jax.random.key(0), K, MEAN, LOG_VAR, decode, num_samples=20000)
  want = _quadrature(_nll, MEAN, LOG_VAR)
  # MC standard error at L = 20000 is ~0.01 nats here; a factor of 2 is > 1 nat.
  np.testing.assert_allclose(terms["recon"], want, atol=0.05)
  var = np.exp(np.asarray(LOG_VAR, np.float64))
  mu = np.asarray(MEAN, np.float64)
  kl = 0.5 * (mu**2 + var - 1.0 - np.log(var)).sum(-1)
  np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5)


def test_negative_elbo_is_nll_plus_kl_to_the_true_posterior():
  """-ELBO = -log p(k) + KL(q(z|k) || p(z|k)), both sides by quadrature; gap > 0."""
  nodes, weights = np.polynomial.hermite_e.hermegauss(200)  # z ~ N(0, 1): the prior
  weights = weights / weights.sum()
  z = jnp.asarray(nodes, jnp.float32)[:, None]
  log_lik = np.stack(
    [-np.asarray(elbo.categorical_nll(K[b : b + 1].repeat(len(z), 0), decode(z))) for b in range(2)]
  )
  log_p = np.log((weights[None] * np.exp(log_lik)).sum(-1))  # [B]

  def log_posterior(zq, b):  # log p(z|k) = log p(k|z) + log N(z; 0, 1) - log p(k)
    ll = -elbo.categorical_nll(K[b : b + 1].repeat(zq.shape[0], 0), decode(zq))
    return ll + gaussian.gaussian_log_prob(zq[:, 0], 0.0, 1.0) - log_p[b]

  kl_post = []
  for b in range(2):
    m, lv = MEAN[b : b + 1], LOG_VAR[b : b + 1]
    kl_post.append(
      _quadrature(
        lambda zq, b=b, m=m, lv=lv: (
          gaussian.gaussian_log_prob(zq[:, 0], m[:, 0], jnp.exp(lv[:, 0])) - log_posterior(zq, b)
        ),
        m,
        lv,
        n=120,
      )[0]
    )
  neg_elbo = (
    _quadrature(_nll, MEAN, LOG_VAR)
    + vae_elbo.vae_elbo(jax.random.key(0), K, MEAN, LOG_VAR, decode)["kl"]
  )
  np.testing.assert_allclose(neg_elbo, -log_p + np.array(kl_post), atol=2e-3)
  assert np.all(np.array(kl_post) > 0.01)


def test_reparameterised_gradient_matches_quadrature_gradient():
  def mc(mean, log_var):
    return vae_elbo.vae_elbo(jax.random.key(1), K, mean, log_var, decode, num_samples=40000)[
      "recon"
    ].sum()

  def exact(mean, log_var):
    return _quadrature(_nll, mean, log_var).sum()

  g_mc = jax.jit(jax.grad(mc, argnums=(0, 1)))(MEAN, LOG_VAR)
  g_ex = jax.jit(jax.grad(exact, argnums=(0, 1)))(MEAN, LOG_VAR)
  for a, b in zip(g_mc, g_ex, strict=True):
    np.testing.assert_allclose(a, b, atol=0.05)
    assert np.all(np.abs(b) > 0.15)  # so the check catches a sign or a factor of 2


def test_vae_elbo_under_jit_vmap_and_bad_inputs():
  key = jax.random.key(2)
  eager = vae_elbo.vae_elbo(key, K, MEAN, LOG_VAR, decode, num_samples=3)
  jitted = jax.jit(lambda m, lv: vae_elbo.vae_elbo(key, K, m, lv, decode, num_samples=3))(
    MEAN, LOG_VAR
  )
  for name in ("recon", "kl"):
    np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-6)
  batched = jax.vmap(lambda m, lv: vae_elbo.vae_elbo(key, K, m, lv, decode, num_samples=3)["kl"])(
    jnp.stack([MEAN, 2 * MEAN]), jnp.stack([LOG_VAR, LOG_VAR])
  )
  np.testing.assert_allclose(batched[0], eager["kl"], rtol=1e-6)
  with pytest.raises(ValueError, match="num_samples"):
    vae_elbo.vae_elbo(key, K, MEAN, LOG_VAR, decode, num_samples=0)
  with pytest.raises(ValueError, match=r"\[B, Dz\]"):
    vae_elbo.vae_elbo(key, K, MEAN[:1], LOG_VAR[:1], decode)
  with pytest.raises(ValueError, match="logits"):
    elbo.categorical_nll(K, jnp.zeros((2, 4, V)))


def test_vae_trains_evaluates_and_samples_with_the_common_commands(tmp_path):
  config = tiny_config(tmp_path / "tfds", num_steps=30, ckpt_every=30, log_every=10)
  config.model.kind = "vae"
  config.model.vae_latent_dim, config.model.vae_hidden = 4, 32
  config.loss.vae_num_samples = 2
  config.train.num_samples = 4
  config.optim.weight_decay = 0.0
  config.optim.ema_decay = 0.5  # 30 steps: evaluate (nearly) the trained params
  workdir = tmp_path / "run"
  result = training.train_and_evaluate(config, str(workdir))
  assert set(result["eval"]) >= {"bpd", "bpd_se", "recon_bpd", "kl_bpd"}
  assert "diffusion_bpd" not in result["eval"]
  np.testing.assert_allclose(
    result["eval"]["recon_bpd"] + result["eval"]["kl_bpd"], result["eval"]["bpd"], rtol=1e-6
  )
  assert result["eval"]["bpd"] < math.log2(17)  # better than uniform after 30 steps
  assert (workdir / "samples_00000030.png").exists()

  vae, mesh, params, step = inference.load_ema_params(config, str(workdir))
  samples = vae.sample(params, jax.random.key(0), 5)
  assert samples.shape == (5, 8, 8, 1) and samples.dtype == jnp.int32
  assert 0 <= int(samples.min()) and int(samples.max()) < 17
  assert not vae.diffusion_time  # the Model interface's flag: no num_steps, t or t_weight
  with pytest.raises(TypeError, match="num_steps"):
    vae.loss_terms(params, samples, jax.random.key(0), num_steps=10)
  with pytest.raises(ValueError, match="probability-flow ODE"):
    ode.evaluate_ode(vae, params, config, mesh)

  out = tmp_path / "eval.json"
  base = [sys.executable, str(REPO / "scripts" / "evaluate.py"), f"--workdir={workdir}"]
  proc = subprocess.run([*base, f"--output={out}", "--passes=2"], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(out.read_text())
  assert got["model"] == "vae" and got["num_examples"] == 300 and got["checkpoint_step"] == step
  assert "kl bits/dim" in proc.stdout
  proc = subprocess.run([*base, "--method=ode"], capture_output=True, text=True)
  assert proc.returncode != 0 and "(VDMs) only" in proc.stderr


def test_vae_config_is_valid_and_rejects_diffusion_steps():
  config = sibling_config(str(REPO / "configs" / "digits.py"), "vae_digits.py")
  assert config.model.kind == "vae"
  from vdm_jax import config as config_lib

  config_lib.validate(config)
  config.loss.num_steps = 10
  with pytest.raises(ValueError, match="loss.num_steps"):
    config_lib.validate(config)
  config.loss.num_steps = 0
  config.model.kind = "flow"
  with pytest.raises(ValueError, match="model.kind"):
    config_lib.validate(config)
