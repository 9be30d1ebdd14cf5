"""An MLP denoiser for low-dimensional data (the 2-D toy sets)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vdm_jax.models.embed import denoiser_inputs

__all__ = ["MLPDenoiser"]


class MLPDenoiser(nn.Module):
  """Predicts eps (or x, v) from z_t `[B, D]` and gamma_t `[B]`; output `[B, D]`.

  Residual MLP: each layer adds the gamma conditioning, swish, and a skip connection;
  the output layer is zero-initialised. `dtype` ("float32" or "bfloat16") is the compute
  dtype of the dense layers; parameters, LayerNorm statistics, the Fourier features and
  the gamma embedding, and the output are float32.
  """

  hidden: int = 256
  num_layers: int = 4
  fourier_features: bool = True
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  vocab_size: int = 256  # sets the Fourier frequencies to the data grid
  dtype: Any = "float32"
  num_classes: int = 0  # > 0: class-conditional on batch["label"] (`LabelEmbedding`)
  label_dropout: float = 0.0

  @nn.compact
  def __call__(self, z, gamma, *, train: bool = False, batch=None):
    if z.ndim != 2:
      raise ValueError(f"MLPDenoiser expects z of shape [B, D], got {z.shape}.")
    dt = jnp.dtype(self.dtype)
    h, cond = denoiser_inputs(self, z, gamma, width=self.hidden // 4, batch=batch, train=train)
    h = nn.Dense(self.hidden, dtype=dt, name="dense_in")(h.astype(dt))
    cond = cond.astype(dt)
    for i in range(self.num_layers):
      y = nn.swish(nn.LayerNorm(name=f"norm{i}")(h.astype(jnp.float32)).astype(dt))
      y = nn.Dense(self.hidden, dtype=dt, name=f"dense{i}a")(y) + nn.Dense(
        self.hidden, dtype=dt, name=f"cond{i}"
      )(cond)
      y = nn.Dense(self.hidden, dtype=dt, name=f"dense{i}b")(nn.swish(y))
      h = h + y
    h = nn.swish(nn.LayerNorm(name="norm_out")(h.astype(jnp.float32)).astype(dt))
    out = nn.Dense(z.shape[-1], kernel_init=nn.initializers.zeros, dtype=dt, name="dense_out")(h)
    return out.astype(jnp.float32)
