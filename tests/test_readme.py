"""The code examples of the README and of docs/ run as written (with a toy model supplied)."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import elbo

REPO = pathlib.Path(__file__).parents[1]


def python_blocks(*pages: str) -> list[str]:
  """The ```python blocks of README.md and docs/*.md (or of `pages`), in order."""
  paths = [REPO / p for p in pages] or [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
  return [b for p in paths for b in re.findall(r"```python\n(.*?)```", p.read_text(), re.S)]


def test_readme_example_runs_and_gives_finite_gradients():
  blocks = [b for b in python_blocks("README.md") if "eps_model" in b]
  assert blocks, "README has no python example of the loss"
  # docs/loss_functions.md shows the same example (the site has no README): one text.
  assert [b for b in python_blocks("docs/loss_functions.md") if "eps_model" in b] == blocks

  def eps_model(params, z_t, gamma_t):
    return params["w"] * z_t + params["b"] * gamma_t[:, None, None, None]

  namespace = {
    "params": {"w": jnp.float32(0.5), "b": jnp.float32(0.01)},
    "k": jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3))),
    "key": jax.random.key(0),
    "eps_model": eps_model,
  }
  exec(blocks[0], namespace)
  grads = namespace["grads"]
  assert set(grads) == {"w", "b"}
  assert all(np.isfinite(float(v)) for v in grads.values())


def test_readme_checked_mode_example():
  block = [b for b in python_blocks() if "checkify" in b][0]
  z_0 = jnp.zeros((2, 3))
  exec(block, {"jax": jax, "elbo": elbo, "k": jnp.array([[0, 1, 255]] * 2), "z_0": z_0})
  with pytest.raises(Exception, match=r"must hold integers in \[0, 255\].*\[0, 256\]"):
    exec(block, {"jax": jax, "elbo": elbo, "k": jnp.array([[0, 1, 256]] * 2), "z_0": z_0})


def test_readme_registers_a_denoiser_that_config_and_training_accept():
  from vdm_jax import data, models
  from vdm_jax.config import base_config, validate

  block = [b for b in python_blocks() if "DENOISERS" in b][0]
  config = base_config()
  config.model.denoiser = "tiny"
  with pytest.raises(
    ValueError, match=r"config.model.denoiser='tiny' is not one of \['unet', 'mlp'"
  ):
    validate(config)
  exec(block, {})
  try:
    validate(config)  # the registry is the list of choices
    model = models.make_model(config, data.static_info(config.data))
    params = model.init(jax.random.key(0))
    k = jnp.zeros((2, *model.data_shape), jnp.int32)
    terms = model.loss_terms(params, k, jax.random.key(1))
    assert terms["total"].shape == (2,) and np.all(np.isfinite(terms["total"]))
  finally:
    models.DENOISERS.unregister("tiny")
