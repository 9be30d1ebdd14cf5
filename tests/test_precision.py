"""bfloat16 mixed precision and the U-Net's layer loops (scan, remat): same ELBO, same grads."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import models
from vdm_jax.config import base_config, validate
from vdm_jax.models.unet import stack_layer_params, unstack_layer_params

TERMS = ("recon", "prior", "diffusion", "total", "bpd")


@dataclasses.dataclass(frozen=True)
class Info:
  name: str
  shape: tuple
  vocab_size: int


IMAGES = Info("rgb", (8, 8, 3), 256)  # V = 256: the highest Fourier frequencies (2^7 2 pi)
POINTS = Info("points", (2,), 256)
N_LAYER = 1  # the down loop has 1 block, the up loop 2: enough to test the loops, quick to compile


def _vdm(info=IMAGES, schedule="learned_linear", **model):
  c = base_config()
  c.schedule.kind = schedule
  c.model.n_layer, c.model.n_embd, c.model.norm_groups = N_LAYER, 16, 8
  c.model.mlp_hidden, c.model.mlp_layers = 32, 2
  c.model.denoiser = "unet" if len(info.shape) == 3 else "mlp"
  for k, v in model.items():
    c.model[k] = v
  return models.make_model(c, info)


def _perturbed(params, scale=0.05):
  """Params with every weight moved off its init (zero-initialised convs hide the net)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  return jax.tree.unflatten(
    treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
  )


def _data(info, batch=16):
  return jax.random.randint(jax.random.key(3), (batch, *info.shape), 0, info.vocab_size)


def _loss_and_grads(vdm, params, k, **kw):
  def loss(p):
    terms = vdm.loss_terms(p, k, jax.random.key(0), **kw)
    return terms["total"].mean(), terms

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)


def _rel_norm(a, b):
  """||a - b|| / ||b|| over all leaves of two pytrees."""
  num = sum(
    float(jnp.sum(jnp.square(x - y)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )
  return (num / sum(float(jnp.sum(jnp.square(y))) for y in jax.tree.leaves(b))) ** 0.5


# Measured per-example differences of the totals: 1e-3 for the U-Net on 8x8x3, V = 256 (a
# broken cast, the Fourier features of a bfloat16 z, is off by up to 6e-2), 6e-3 for the
# MLP on 2-D points, whose two dimensions average nothing out.
@pytest.mark.parametrize(
  ("info", "rtol"),
  [pytest.param(IMAGES, 5e-3, marks=pytest.mark.slow), (POINTS, 2e-2)],
  ids=["unet", "mlp"],
)
def test_bfloat16_elbo_close_to_float32_and_float32_everywhere_outside(info, rtol):
  f32, bf16 = _vdm(info), _vdm(info, dtype="bfloat16")
  init = bf16.init(jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(init)} == {jnp.dtype(jnp.float32)}
  params, k = _perturbed(init), _data(info)
  t = jnp.linspace(0.0, 1.0, k.shape[0])  # every noise level, low to high SNR
  (_, ref), g_ref = _loss_and_grads(f32, params, k, t=t)
  (_, got), g_got = _loss_and_grads(bf16, params, k, t=t)
  for name in TERMS:
    assert got[name].dtype == jnp.float32, name
  np.testing.assert_allclose(got["total"], ref["total"], rtol=rtol)
  np.testing.assert_allclose(got["diffusion"], ref["diffusion"], rtol=rtol)
  for name in ("recon", "prior"):  # no network in them: identical
    np.testing.assert_array_equal(got[name], ref[name])
  assert {x.dtype for x in jax.tree.leaves(g_got)} == {jnp.dtype(jnp.float32)}
  assert _rel_norm(g_got, g_ref) < 5e-2  # measured 1e-2


@functools.cache
def _layer_loop_run(attention_everywhere=False, scan_layers=False, remat=False):
  """(denoiser output, loss, grads) of one U-Net layout, on the same weights for all.

  The weights are the unrolled layout's (perturbed), converted to the scanned layout when
  `scan_layers`; the returned grads are converted back to the unrolled layout."""
  kw = dict(attention_everywhere=attention_everywhere, schedule="linear")
  vdm = _vdm(**kw, scan_layers=scan_layers, remat=remat)
  params = _perturbed(_vdm(**kw).init(jax.random.key(0)))
  if scan_layers:
    params = {**params, "denoiser": stack_layer_params(params["denoiser"], N_LAYER)}
    # The conversion gives exactly the tree the scanned model initialises.
    assert jax.tree.structure(params) == jax.tree.structure(vdm.init(jax.random.key(0)))
  z = jax.random.normal(jax.random.key(1), (4, *IMAGES.shape))
  g = jnp.linspace(-10.0, 4.0, 4)
  k = _data(IMAGES, batch=4)

  @jax.jit
  def run(params):
    out = vdm.denoiser.apply({"params": params["denoiser"]}, z, g)
    loss = lambda p: vdm.loss_terms(p, k, jax.random.key(0))["total"].mean()
    return out, *jax.value_and_grad(loss)(params)

  out, loss, grads = run(params)
  if scan_layers:
    grads = {**grads, "denoiser": unstack_layer_params(grads["denoiser"])}
  return out, loss, grads


def _assert_same_run(got, want):
  (out_a, loss_a, grads_a), (out_b, loss_b, grads_b) = got, want
  # float32 round-off only: XLA orders the sums differently in a loop or a remat.
  np.testing.assert_allclose(out_a, out_b, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  # Gradients: round-off relative to each array's scale (entries reach ~1e2 here).
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(
      a, b, atol=1e-5 + 1e-6 * float(np.max(np.abs(b))), rtol=1e-4
    ),
    grads_a,
    grads_b,
  )


@pytest.mark.slow  # compiles the U-Net three ways
def test_scanned_and_rematerialised_layers_equal_unrolled_for_the_same_weights():
  # With attention everywhere (the scanned body holds both blocks); nn.remat wraps the same
  # block function scanned or not, so one remat layout is tested.
  unrolled = _layer_loop_run(True)
  _assert_same_run(_layer_loop_run(True, scan_layers=True), unrolled)
  _assert_same_run(_layer_loop_run(True, scan_layers=True, remat=True), unrolled)


def test_layer_param_conversion_round_trip():
  params = _vdm(attention_everywhere=True).init(jax.random.key(0))["denoiser"]
  stacked = stack_layer_params(params, N_LAYER)
  assert stacked["up"]["block"]["skip"]["kernel"].shape == (N_LAYER + 1, 32, 16)
  assert stacked["down"]["attn"]["norm"]["scale"].shape == (N_LAYER, 16)
  jax.tree.map(np.testing.assert_array_equal, unstack_layer_params(stacked), params)


def test_layer_param_conversion_checks_its_input():
  params = _vdm().init(jax.random.key(0))["denoiser"]
  with pytest.raises(ValueError, match=f"n_layer={N_LAYER + 1}"):
    stack_layer_params(params, N_LAYER + 1)
  with pytest.raises(ValueError, match=f"n_layer={N_LAYER - 1}"):
    stack_layer_params(params, N_LAYER - 1)
  with pytest.raises(ValueError, match="scanned layout"):
    unstack_layer_params(params)


@pytest.mark.parametrize(
  ("field", "value", "match"),
  [
    ("dtype", "float16", r"config.model.dtype='float16' is not one of \['float32', 'bfloat16'\]"),
    ("dtype", "bf16", r"config.model.dtype='bf16'"),
  ],
)
def test_config_rejects_bad_precision_fields(field, value, match):
  c = base_config()
  c.model[field] = value
  with pytest.raises(ValueError, match=match):
    validate(c)


def test_config_rejects_layer_loops_without_a_unet():
  c = base_config()
  c.model.denoiser, c.model.remat = "mlp", True
  with pytest.raises(ValueError, match="config.model.remat=True applies to the U-Net"):
    validate(c)
  validate(base_config())  # the defaults pass
