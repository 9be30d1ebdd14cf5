"""Noise schedules as Flax modules: t `[...]` -> gamma(t) `[...]`, strictly increasing.

(Called `vdm_jax.models.noise` before; that name still imports, with a warning.)

Fixed schedules wrap the pure ones of `vdm_jax.schedules` (no parameters); learned ones
keep their parameters under the `schedule` collection so the optimiser can exclude them
from weight decay.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["FixedSchedule", "LearnedLinearSchedule", "MonotoneSchedule"]


class FixedSchedule(nn.Module):
  """A parameter-free schedule from `vdm_jax.schedules` (linear, cosine, DDPM)."""

  schedule: Any

  def __call__(self, t):
    return self.schedule(t)


class LearnedLinearSchedule(nn.Module):
  """gamma(t) = b + |w| t, with b and w learned (initialised to gamma_min, gamma_max - gamma_min)."""

  gamma_min: float = -13.3
  gamma_max: float = 5.0

  @nn.compact
  def __call__(self, t):
    b = self.param("b", nn.initializers.constant(self.gamma_min), ())
    w = self.param("w", nn.initializers.constant(self.gamma_max - self.gamma_min), ())
    return b + jnp.abs(w) * t


class _PositiveDense(nn.Module):
  """Dense layer with non-negative weights (softplus of the raw kernel)."""

  features: int

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.normal(0.5), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = x @ jax.nn.softplus(kernel)
    return y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


class MonotoneSchedule(nn.Module):
  """The VDM paper's monotone network, rescaled to learned endpoints gamma_min, gamma_max.

  g(t) = l1(t) + l3(sigmoid(l2(l1(t)))) with non-negative weights is increasing in t;
  gamma(t) = gamma_min + |gamma_max - gamma_min| (g(t) - g(0)) / (g(1) - g(0)).
  """

  gamma_min: float = -13.3
  gamma_max: float = 5.0
  hidden: int = 1024

  @nn.compact
  def __call__(self, t):
    l1 = _PositiveDense(1, name="l1")
    l2 = _PositiveDense(self.hidden, name="l2")
    l3 = _PositiveDense(1, name="l3")

    def g(u):
      h = l1(u[..., None])
      return (h + l3(nn.sigmoid(l2(h))))[..., 0]

    g0, g1 = g(jnp.zeros(())), g(jnp.ones(()))
    gamma_min = self.param("gamma_min", nn.initializers.constant(self.gamma_min), ())
    gamma_max = self.param("gamma_max", nn.initializers.constant(self.gamma_max), ())
    span = jnp.abs(gamma_max - gamma_min)  # keeps gamma increasing whatever the optimiser does
    return gamma_min + span * (g(t) - g0) / (g1 - g0)
