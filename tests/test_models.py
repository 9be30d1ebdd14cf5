"""Denoisers, learned schedules and the VDM module's loss terms."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import models, schedules
from vdm_jax.config import base_config


@dataclasses.dataclass(frozen=True)
class Info:
  name: str
  shape: tuple
  vocab_size: int


def _tiny(**model):
  c = base_config()
  c.model.n_layer, c.model.n_embd, c.model.norm_groups = 1, 16, 8
  c.model.mlp_hidden, c.model.mlp_layers = 32, 2
  for k, v in model.items():
    c.model[k] = v
  return c


@pytest.mark.parametrize("attention_everywhere", [False, True])
def test_unet_shapes_zero_init_and_dropout(attention_everywhere):
  net = models.UNet(n_layer=2, n_embd=16, norm_groups=8, attention_everywhere=attention_everywhere)
  z = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  g = jnp.array([-5.0, 2.0])
  params = net.init(jax.random.key(1), z, g)
  out = net.apply(params, z, g)
  assert out.shape == z.shape
  np.testing.assert_array_equal(out, 0.0)  # zero-initialised output conv
  # Perturb every weight (zero-initialised residual branches hide the conditioning at
  # init): the output then depends on gamma, and dropout acts in training only.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  p = jax.tree.unflatten(
    treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  )
  a = net.apply(p, z, g)
  b = net.apply(p, z, g + 1.0)
  assert not np.allclose(a, b)
  d1 = net.apply(p, z, g, train=True, rngs={"dropout": jax.random.key(2)})
  d2 = net.apply(p, z, g, train=True, rngs={"dropout": jax.random.key(3)})
  assert not np.allclose(d1, d2)
  with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
    net.apply(params, z[:, 0], g)


def test_mlp_denoiser():
  net = models.MLPDenoiser(hidden=32, num_layers=2)
  z = jax.random.normal(jax.random.key(0), (5, 2))
  params = net.init(jax.random.key(1), z, jnp.zeros(5))
  assert net.apply(params, z, jnp.zeros(5)).shape == (5, 2)


@pytest.mark.parametrize("module", [models.LearnedLinearSchedule(), models.MonotoneSchedule()])
def test_learned_schedules_monotone_with_endpoints(module):
  t = jnp.linspace(0, 1, 101)
  params = module.init(jax.random.key(0), t)
  g = module.apply(params, t)
  assert np.all(np.diff(np.asarray(g)) > 0)
  np.testing.assert_allclose([g[0], g[-1]], [-13.3, 5.0], rtol=1e-5)
  # Perturbed parameters keep gamma increasing.
  noisy = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(1), x.shape), params)
  assert np.all(np.diff(np.asarray(module.apply(noisy, t))) > 0)


def test_vdm_initial_loss_matches_analytic():
  """At init eps_hat = 0, so the continuous diffusion loss is 1/2 gamma' ||eps||^2."""
  c = _tiny()
  vdm = models.make_model(c, Info("digits", (8, 8, 1), 17))
  params = vdm.init(jax.random.key(0))
  k = jnp.asarray(np.random.default_rng(0).integers(0, 17, (512, 8, 8, 1)))
  terms = vdm.loss_terms(params, k, jax.random.key(1))
  assert set(terms) == {"recon", "prior", "diffusion", "total", "bpd", "t"}
  assert all(v.shape == (512,) for v in terms.values())
  np.testing.assert_allclose(float(terms["diffusion"].mean()), 0.5 * 18.3 * 64, rtol=0.03)
  np.testing.assert_allclose(
    terms["total"], terms["recon"] + terms["prior"] + terms["diffusion"], rtol=1e-6
  )
  # The prior term is the analytic KL of the schedule's endpoint.
  x = (2 * np.asarray(k, np.float64) + 1) / 17 - 1
  a2 = 1 / (1 + np.exp(5.0))
  want = (0.5 * (a2 * x**2 + (-np.log1p(-a2) - a2))).reshape(512, -1).sum(-1)
  np.testing.assert_allclose(terms["prior"], want, rtol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "x", "v"])
@pytest.mark.parametrize("num_steps", [0, 10])
def test_vdm_parameterisations_and_discrete_time(prediction, num_steps):
  c = _tiny(prediction=prediction)
  c.loss.num_steps = num_steps
  c.schedule.kind = "monotone"
  vdm = models.make_model(c, Info("digits", (8, 8, 1), 17))
  params = vdm.init(jax.random.key(0))
  k = jnp.asarray(np.random.default_rng(0).integers(0, 17, (4, 8, 8, 1)))
  loss = lambda p: vdm.loss_terms(p, k, jax.random.key(1), train=True)["bpd"].mean()
  value, grads = jax.value_and_grad(loss)(params)
  assert np.isfinite(float(value))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["schedule"]["gamma_max"])) > 0  # the prior term reaches the schedule


def test_make_vdm_rejects_mismatched_data():
  with pytest.raises(ValueError, match="denoiser='mlp'"):
    models.make_model(_tiny(), Info("toy2d", (2,), 256))
  with pytest.raises(ValueError, match="needs flat data"):
    models.make_model(_tiny(denoiser="mlp"), Info("digits", (8, 8, 1), 17))
  vdm = models.make_model(_tiny(), Info("digits", (8, 8, 1), 17))
  params = vdm.init(jax.random.key(0))
  with pytest.raises(ValueError, match="does not match the model's"):
    vdm.loss_terms(params, jnp.zeros((2, 8, 8, 3), jnp.int32), jax.random.key(0))


def test_fixed_schedules_through_vdm():
  for kind, want in [
    ("linear", schedules.LinearSchedule()),
    ("cosine", schedules.CosineSchedule()),
  ]:
    c = _tiny()
    c.schedule.kind = kind
    vdm = models.make_model(c, Info("digits", (8, 8, 1), 17))
    params = vdm.init(jax.random.key(0))
    assert params["schedule"] == {}
    t = jnp.linspace(0, 1, 5)
    np.testing.assert_allclose(vdm.gamma(params, t), want(t), rtol=1e-6)
