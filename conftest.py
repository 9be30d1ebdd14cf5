"""Strict JAX settings for every test and docstring example: no silent rank promotion and
no implicit dtype promotion (`jax_numpy_dtype_promotion="strict"`: mixing float32 with
int32 or float64 arrays raises, only Python scalars stay weakly typed). And one persistent
compilation cache shared by the test workers and the CLI subprocesses they start, so the
many small trainings of the same tiny model compile once (an unknown or new cache only
costs the compile it would have done anyway).

And XLA's backend optimisation level 0 for every test and the subprocesses they start:
the suite compiles far more than it runs (hundreds of small programs, most run a few
times), and level 0 cuts a tiny U-Net train step's compile from 7.1 s to 4.3 s (its step
from 20 to 34 ms), the cold suite on 2 cores from about 8.5 to 7.3 minutes. Every
comparison in the suite is between runs under the same flags; the CLIs, the demo and the
benchmarks use XLA's default pipeline.

The docstring examples of `vdm_jax/` run with `--doctest-modules` (pyproject.toml); the
modules in `collect_ignore` are left out, each for the reason given there.
"""

import functools
import os
import tempfile

os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(tempfile.gettempdir(), f"vdm_jax_test_jit_cache_{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
  ).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)

collect_ignore = [
  # Their examples build the dataset under /tmp/tfds, a side effect outside the test's tmp
  # dir (both builders are tested in tests/test_data.py and tests/test_photos.py).
  "vdm_jax/data/digits.py",
  "vdm_jax/data/photos.py",
  # Its example is a sketch (`np` and `toy2d` not imported); the module is tested in
  # tests/test_data.py.
  "vdm_jax/data/toy2d.py",
  # Deprecated old names: importing them warns (tested in tests/test_renames.py).
  "vdm_jax/evaluation/sampling.py",
  "vdm_jax/models/noise.py",
]


def _optax_bias_correction_under_standard_promotion() -> None:
  """optax's Adam raises a float32 decay to its int32 step count in `optax.tree.bias_correction`
  (optax 0.2.8, also the newest), which strict promotion refuses. Only that function runs
  under standard promotion here; the trainer, evaluation and everything else of this
  project stay strict (with this, training passes under strict promotion)."""
  try:
    import optax
  except ImportError:  # the pure-maths-only job (scripts/test_versions.sh lowest)
    return
  original = getattr(getattr(optax, "tree", None), "bias_correction", None)
  if original is None:
    return

  @functools.wraps(original)
  def bias_correction(*args, **kwargs):
    with jax.numpy_dtype_promotion("standard"):
      return original(*args, **kwargs)

  optax.tree.bias_correction = bias_correction


_optax_bias_correction_under_standard_promotion()


@pytest.fixture
def rng():
  return np.random.default_rng(0)
