"""The random streams of a run, named: every key or seed derived from `config.seed`.

A run has one integer seed. Each independent use of randomness gets its own stream, and
this module is the one place that says which: two uses never share a stream by accident,
and a reader sees every derivation here instead of `seed + 2` in some file.

| stream | derivation | used by |
|---|---|---|
| data order | `seed` (grain's shuffle seed) | `data.make_train_iterator` |
| parameter init | `split(key(seed))[0]` | `training.create_train_state` |
| training steps | `split(key(seed))[1]`, then `fold_in(., step)` | `training.train_step` |
| evaluation | `key(seed + EVALUATION)` | `evaluation.bpd` (and classify, report) |
| probability-flow ODE | `key(seed + ODE)` | `evaluation.ode` |
| sample grids | `fold_in(key(seed), SAMPLE_GRID)` | `training.write_samples` |

Within one training step, the step key is split again by `fold_in`: `STEP_TIMES` for the
importance-sampled times, `STEP_MICRO_BATCHES` (then the micro-batch index) for gradient
accumulation. Changing any of these numbers changes every result of a seed: they are
fixed (the tests compare runs across versions bit for bit).

`config.validate` keeps `seed + MAX_OFFSET` below 2**32, so every seed here is a valid
uint32.
"""

from __future__ import annotations

__all__ = [
  "EVALUATION",
  "MAX_OFFSET",
  "ODE",
  "SAMPLE_GRID",
  "STEP_MICRO_BATCHES",
  "STEP_TIMES",
  "evaluation_seed",
  "ode_seed",
  "sample_grid_key",
  "train_keys",
]

EVALUATION = 1
"""Offset of the evaluation seed: `config.seed + EVALUATION` (times t, noise, probes)."""

ODE = 2
"""Offset of the probability-flow ODE's seed (dequantisation, divergence probes)."""

MAX_OFFSET = max(EVALUATION, ODE)
"""The largest offset added to `config.seed`; seeds must stay below 2**32 - MAX_OFFSET."""

SAMPLE_GRID = 1_000_003
"""`fold_in(key(config.seed), SAMPLE_GRID)`: the key of the sample grids of training."""

STEP_TIMES = 1
"""`fold_in(step_key, STEP_TIMES)`: a step's importance-sampled diffusion times."""

STEP_MICRO_BATCHES = 2
"""`fold_in(fold_in(step_key, STEP_MICRO_BATCHES), i)`: micro-batch i's key."""


def train_keys(seed: int):
  """(init_key, base_step_key) of training: `jax.random.split(jax.random.key(seed))`.

  The state is initialised from the first; step s uses `fold_in(base_step_key, s)`.
  """
  import jax

  init_key, step_key = jax.random.split(jax.random.key(seed))
  return init_key, step_key


def evaluation_seed(seed: int) -> int:
  """The default seed of a run's evaluations: `seed + EVALUATION`."""
  return seed + EVALUATION


def ode_seed(seed: int) -> int:
  """The default seed of a run's probability-flow ODE evaluation: `seed + ODE`."""
  return seed + ODE


def sample_grid_key(seed: int):
  """The key of the sample grids drawn during and at the end of training."""
  import jax

  return jax.random.fold_in(jax.random.key(seed), SAMPLE_GRID)
