"""Networks with the maths and parameter names of google-research/vdm (the VDM paper's code).

Checkpoints of that code (`scripts/import_vdm_checkpoint.py`) load into these modules
unchanged, so a published CIFAR-10 model is an ordinary model of this project
(`config.model.denoiser = "vdm_reference"`): it evaluates, samples, trains and resumes
through the same commands as the others. docs/reference_checkpoints.md shows how.

`ReferenceScoreUNet` differs from this project's `UNet` in ways that change its output,
which is why it is a module of its own rather than a parameter mapping:

* the noise level enters as t = (gamma_t - gamma_min) / (gamma_max - gamma_min), scaled by
  1000 and embedded with frequencies exp(-log(10^4) i / (d/2 - 1)) (the denominator is
  d/2 - 1, not d/2), and a conditioning scalar (always 0: the unaugmented data) is
  appended to the embedding before the first dense layer `dense0`;
* the Fourier features of z are sin/cos(2^n 2 pi z) for n in {6, 7} whatever the
  vocabulary;
* in each residual block the conditioning is added through a bias-free, zero-initialised
  projection (`cond_proj`), and the shortcut is `nin_shortcut`;
* attention is one head of plain dense q, k, v and `proj_out` layers;
* the network returns eps_hat + z: its last convolution predicts eps - z (the
  reference's "base measure"), so an untrained network predicts eps_hat = z.

GroupNorm uses `norm_groups` groups everywhere (the reference: Flax's default, 32) and
epsilon 1e-6; dropout sits between the second normalisation and the second convolution of
each residual block. The parameter tree is the reference's `score_model` tree:
`conv_in`, `dense0`, `dense1`, `down.block_<i>` (and `down.attn_<i>` with attention
everywhere), `mid.block_1`, `mid.attn_1`, `mid.block_2`, `up.block_<i>` (n_layer + 1 of
them, and `up.attn_<i>`), `GroupNorm_0`, `conv_out`.

`ReferenceNNetSchedule` is the reference's learned monotone network ("learnable_nnet"),
with the parameters `l1`, `l2`, `l3`. The reference's two other schedules are already here
under other names: "fixed" is `schedule.kind = "linear"` and "learnable_scalar" is
`"learned_linear"` (the same formula; its `w`, `b` are scalars here, shape (1,) there).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vdm_jax.models.embed import fourier_features

__all__ = [
  "FOURIER_EXPONENTS",
  "ReferenceNNetSchedule",
  "ReferenceScoreUNet",
  "check_config",
  "reference_embedding",
]

FOURIER_EXPONENTS = (6, 8)  # n in [6, 8): fixed in the reference, whatever the vocabulary
"""The range [6, 8) of n in the Fourier features 2^n 2 pi z: fixed in the reference, whatever the
vocabulary."""


def reference_embedding(t, dim: int):
  """The reference's sinusoidal embedding of t `[B]` (t in [0, 1]): `[B, dim]`.

  Frequencies exp(-log(10^4) i / (dim/2 - 1)), i < dim/2, applied to 1000 t; sines then
  cosines; a zero column appended when dim is odd.
  """
  half = dim // 2
  if half < 2:
    raise ValueError(f"The reference embedding needs dim >= 4, got {dim}.")
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10_000.0) / (half - 1)))
  args = (1000.0 * t.astype(jnp.float32))[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class _ResnetBlock(nn.Module):
  """GroupNorm, swish, conv1, + cond_proj(cond), GroupNorm, swish, dropout, conv2, + shortcut."""

  out_ch: int | None
  groups: int
  dropout: float

  @nn.compact
  def __call__(self, x, cond, train: bool):
    out_ch = x.shape[-1] if self.out_ch is None else self.out_ch
    h = nn.swish(nn.GroupNorm(self.groups, name="GroupNorm_0")(x))
    h = nn.Conv(out_ch, (3, 3), name="conv1")(h)
    h = (
      h
      + nn.Dense(out_ch, use_bias=False, kernel_init=nn.initializers.zeros, name="cond_proj")(cond)[
        :, None, None, :
      ]
    )
    h = nn.swish(nn.GroupNorm(self.groups, name="GroupNorm_1")(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = nn.Conv(out_ch, (3, 3), kernel_init=nn.initializers.zeros, name="conv2")(h)
    if x.shape[-1] != out_ch:
      x = nn.Dense(out_ch, name="nin_shortcut")(x)
    return x + h


class _AttnBlock(nn.Module):
  """One-head self-attention over all positions, residual: x + proj_out(softmax(q k^T / sqrt(C)) v)."""

  groups: int

  @nn.compact
  def __call__(self, x):
    b, height, width, c = x.shape
    h = nn.GroupNorm(self.groups, name="GroupNorm_0")(x).reshape(b, height * width, c)
    q = nn.Dense(c, name="q")(h)
    k = nn.Dense(c, name="k")(h)
    v = nn.Dense(c, name="v")(h)
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q / math.sqrt(c), k), axis=-1)
    h = jnp.einsum("bqk,bkc->bqc", weights, v)
    h = nn.Dense(c, kernel_init=nn.initializers.zeros, name="proj_out")(h)
    return x + h.reshape(b, height, width, c)


class ReferenceScoreUNet(nn.Module):
  """google-research/vdm's `ScoreUNet`: eps_hat `[B, H, W, C]` from z_t `[B, H, W, C]` and gamma_t.

  Attributes:
    n_layer: residual blocks down (`sm_n_layer`); n_layer + 1 up.
    n_embd: channels (`sm_n_embd`); the conditioning vector has 4 n_embd.
    norm_groups: GroupNorm groups (the reference: 32).
    dropout: dropout rate in the residual blocks, training only (`sm_pdrop`).
    fourier_features: concatenate sin/cos(2^n 2 pi z), n in {6, 7}, to z at the input.
    attention_everywhere: attention after every down and up block (`with_attention`);
      the middle attention block is always there.
    gamma_min, gamma_max: the reference config's fixed range that maps gamma_t to t.
  """

  n_layer: int = 32
  n_embd: int = 128
  norm_groups: int = 32
  dropout: float = 0.1
  fourier_features: bool = True
  attention_everywhere: bool = False
  gamma_min: float = -13.3
  gamma_max: float = 5.0

  @nn.compact
  def __call__(self, z, gamma, *, train: bool = False, batch=None):
    """Args: z `[B, H, W, C]`; gamma scalar or `[B]`; batch: ignored (the reference's
    conditioning input is 0 for unaugmented data). Returns eps_hat, float32 like z."""
    del batch
    if z.ndim != 4:
      raise ValueError(f"ReferenceScoreUNet expects z of shape [B, H, W, C], got {z.shape}.")
    z = z.astype(jnp.float32)
    n = self.n_embd
    t = (jnp.asarray(gamma, jnp.float32) - self.gamma_min) / (self.gamma_max - self.gamma_min)
    t = jnp.broadcast_to(t, (z.shape[0],))
    cond = jnp.concatenate(
      [reference_embedding(t, n), jnp.zeros((z.shape[0], 1), jnp.float32)], axis=1
    )
    cond = nn.swish(nn.Dense(4 * n, name="dense0")(cond))
    cond = nn.swish(nn.Dense(4 * n, name="dense1")(cond))

    h = z
    if self.fourier_features:
      h = jnp.concatenate([z, fourier_features(z, *FOURIER_EXPONENTS)], axis=-1)
    h = nn.Conv(n, (3, 3), name="conv_in")(h)
    block = lambda out_ch, name: _ResnetBlock(out_ch, self.norm_groups, self.dropout, name=name)
    attn = lambda name: _AttnBlock(self.norm_groups, name=name)

    skips = [h]
    for i in range(self.n_layer):
      h = block(n, f"down.block_{i}")(skips[-1], cond, train)
      if self.attention_everywhere:
        h = attn(f"down.attn_{i}")(h)
      skips.append(h)
    h = block(None, "mid.block_1")(h, cond, train)
    h = attn("mid.attn_1")(h)
    h = block(None, "mid.block_2")(h, cond, train)
    for i in range(self.n_layer + 1):
      h = block(n, f"up.block_{i}")(jnp.concatenate([h, skips.pop()], axis=-1), cond, train)
      if self.attention_everywhere:
        h = attn(f"up.attn_{i}")(h)

    h = nn.swish(nn.GroupNorm(self.norm_groups, name="GroupNorm_0")(h))
    out = nn.Conv(z.shape[-1], (3, 3), kernel_init=nn.initializers.zeros, name="conv_out")(h)
    return out + z  # the reference's base measure: the convolution predicts eps - z


class _MonotoneDense(nn.Module):
  """x @ |kernel| (+ bias): increasing in every input."""

  features: int
  kernel_init: object = nn.initializers.normal(0.01)
  bias_init: object = nn.initializers.zeros
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
    y = x @ jnp.abs(kernel)
    if self.use_bias:
      bias = self.param("bias", self.bias_init, (self.features,))
      y = y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)
    return y


class ReferenceNNetSchedule(nn.Module):
  """The reference's "learnable_nnet" schedule: t `[...]` -> gamma(t) `[...]`, increasing.

  gamma(t) = l1(t) + l3(2 sigmoid(l2(2t - 1)) - 1) / n_features, every kernel taken in
  absolute value; l1 starts at gamma_min + (gamma_max - gamma_min) t, l2 and l3 at small
  normal weights. Unlike `MonotoneSchedule` its end points are not pinned: gamma(0) and
  gamma(1) move with all the parameters.
  """

  gamma_min: float = -13.3
  gamma_max: float = 5.0
  n_features: int = 1024

  @nn.compact
  def __call__(self, t):
    t = jnp.asarray(t, jnp.float32)[..., None]
    span = self.gamma_max - self.gamma_min
    h = _MonotoneDense(
      1,
      kernel_init=nn.initializers.constant(span),
      bias_init=nn.initializers.constant(self.gamma_min),
      name="l1",
    )(t)
    g = _MonotoneDense(self.n_features, name="l2")(2.0 * (t - 0.5))
    g = 2.0 * (nn.sigmoid(g) - 0.5)
    g = _MonotoneDense(1, use_bias=False, name="l3")(g) / self.n_features
    return (h + g)[..., 0]


def check_config(config, data_shape) -> None:
  """Raises ValueError for a config that `ReferenceScoreUNet` cannot run (`config.validate`).

  Args:
    config: a config with `model.denoiser = "vdm_reference"`.
    data_shape: the dataset's per-example shape.
  """
  m = config.model
  if len(data_shape) != 3:
    raise ValueError(
      f"config.model.denoiser='vdm_reference' needs image data [H, W, C]; "
      f"config.data.name={config.data.name!r} has shape {tuple(data_shape)}."
    )
  if m.prediction != "eps":
    raise ValueError(
      f"config.model.denoiser='vdm_reference' predicts eps (as the reference does); got "
      f"config.model.prediction={m.prediction!r}. Use config.model.prediction='eps'."
    )
  if m.dtype != "float32":
    raise ValueError(
      f"config.model.denoiser='vdm_reference' computes in float32; got config.model.dtype="
      f"{m.dtype!r}. Use config.model.dtype='float32'."
    )
  if isinstance(m.n_embd, int) and m.n_embd < 4:
    raise ValueError(
      f"config.model.n_embd={m.n_embd}: the reference's time embedding needs n_embd >= 4."
    )
