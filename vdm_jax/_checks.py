"""Input checks shared by the pure functions.

Shapes and dtypes are static under `jax.jit`, so these checks run once at
trace time and cost nothing per call. Every failure is a `ValueError` that
names the argument, what it is, and what was expected.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import checkify
from jax.typing import ArrayLike


def _describe(x: ArrayLike) -> str:
  arr = jnp.asarray(x)  # only on the error path
  return f"shape {tuple(arr.shape)} and dtype {arr.dtype}"


def as_float(name: str, x: ArrayLike) -> jax.Array:
  """Returns `x` as a floating array; integers and bools are refused."""
  if isinstance(x, (int, float)) and not isinstance(x, bool):
    return jnp.asarray(x, dtype=jnp.float32)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"`{name}` must be a floating array, got {_describe(x)}.")
  return x


def as_int(name: str, x: ArrayLike) -> jax.Array:
  """Returns `x` as an integer array; floats are refused (no silent rounding)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise ValueError(
      f"`{name}` must be an integer array of data values in {{0, ..., V-1}}, got {_describe(x)}."
    )
  return x


def check_batched(name: str, x: jax.Array, min_ndim: int = 1) -> None:
  if x.ndim < min_ndim:
    raise ValueError(
      f"`{name}` must have a leading batch axis and at least {min_ndim} dimension(s), "
      f"got {_describe(x)}."
    )


def check_same_shape(name_a: str, a: jax.Array, name_b: str, b: jax.Array) -> None:
  if tuple(a.shape) != tuple(b.shape):
    raise ValueError(
      f"`{name_a}` and `{name_b}` must have the same shape, got {tuple(a.shape)} and "
      f"{tuple(b.shape)}."
    )


def per_example(name: str, v: ArrayLike, like: jax.Array, *, batch_name: str = "x") -> jax.Array:
  """Checks a per-example or per-dimension quantity and makes it broadcast over `like`.

  Args:
    name: argument name, for error messages.
    v: a scalar (shared by all examples), a `[B]` vector (one value per example, aligned
      on the batch axis) or an array of `like`'s shape `[B, *data_shape]` (one value per
      example and data dimension, e.g. a per-dimension gamma).
    like: the batched data array `[B, ...]` that `v` multiplies.
    batch_name: name of `like`, for error messages.

  Returns:
    `v` with shape `[]`, `[B, 1, ..., 1]` (rank of `like`) or `like.shape`, ready to
    broadcast.
  """
  v = as_float(name, v)
  if v.ndim == 0:
    return v
  if like.ndim > 1 and tuple(v.shape) == tuple(like.shape):
    return v
  if v.ndim != 1 or like.ndim == 0 or v.shape[0] != like.shape[0]:
    lead = like.shape[0] if like.ndim else "?"
    raise ValueError(
      f"`{name}` must be a scalar or one value per example with shape ({lead},) to match "
      f"`{batch_name}` of shape {tuple(like.shape)} (or one value per data dimension, with "
      f"`{batch_name}`'s shape), got shape {tuple(v.shape)}."
    )
  return v.reshape(v.shape + (1,) * (like.ndim - 1))


def is_per_dimension(v: jax.Array, like: jax.Array) -> bool:
  """Whether a checked `per_example` value holds one entry per data dimension of `like`."""
  return like.ndim > 1 and tuple(v.shape) == tuple(like.shape)


def sum_except_batch(x: jax.Array) -> jax.Array:
  """Sums over every axis but the first: `[B, ...] -> [B]`."""
  return jnp.sum(x.reshape(x.shape[0], -1), axis=-1)


def check_vocab_size(vocab_size: object) -> int:
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
    raise ValueError(f"`vocab_size` must be a Python int >= 2, got {vocab_size!r}.")
  return vocab_size


def check_num_steps(num_steps: object, *, allow_zero: bool) -> int:
  low = 0 if allow_zero else 1
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < low:
    what = "0 (continuous time) or a positive int" if allow_zero else "a positive int"
    raise ValueError(f"`num_steps` must be {what}, got {num_steps!r}.")
  return num_steps


def check_levels(k, vocab_size: int, validate: bool) -> None:
  """With `validate`, a checkify check that the integers k are in {0..V-1}.

  Eagerly it raises at once; under `jax.jit` the caller wraps the function in
  `checkify.checkify` (an unfunctionalised check under jit is refused by JAX).
  """
  if validate:
    checkify.check(
      jnp.all((k >= 0) & (k < vocab_size)),
      f"`k` must hold integers in [0, {vocab_size - 1}] (vocab_size = {vocab_size}); got "
      "values in [{lo}, {hi}].",
      lo=jnp.min(k),
      hi=jnp.max(k),
    )
