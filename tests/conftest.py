"""Strict JAX settings for every test: no silent rank promotion. And one persistent
compilation cache shared by the test workers and the CLI subprocesses they start, so the
many small trainings of the same tiny model compile once (an unknown or new cache only
costs the compile it would have done anyway)."""

import os
import tempfile

os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(tempfile.gettempdir(), f"vdm_jax_test_jit_cache_{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)


@pytest.fixture
def rng():
  return np.random.default_rng(0)
