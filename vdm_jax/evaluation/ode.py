r"""Exact likelihood of the probability-flow ODE, integrated with diffrax.

For the variance-preserving process in gamma form the forward SDE has drift
f(t) z = -1/2 sigma_t^2 gamma'(t) z and diffusion g(t)^2 = sigma_t^2 gamma'(t); with the
score -eps_hat / sigma_t the probability-flow ODE is

  dz/dt = 1/2 gamma'(t) (sigma_t eps_hat(z_t, t) - sigma_t^2 z_t),

and the change of variables along it gives
log p_0(z_0) = log N(z_1; 0, I) + int_0^1 div_z (dz/dt) dt. The divergence is exact
(D Jacobian-vector products) for low-dimensional data, else Hutchinson's estimator
v^T J v with one Rademacher v per example and solve.

Discrete data. z_0 = alpha_0 x gives a density on x, p(x) = p_0(alpha_0 x) alpha_0^D. With
uniform dequantisation x = (2k + 1)/V - 1 + u, u ~ U(-1/V, 1/V)^D, Jensen's inequality gives
-log P(k) <= E_u[-log p(x)] - D log(2/V): the bin width 2/V is the discretisation
offset, so the resulting bits/dim bound the same discrete likelihood as the ELBO.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import _checks, _deps, data, elbo, schedules, streams
from vdm_jax.evaluation import bpd
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.runtime import signals as _signals

diffrax = _deps.require(
  "diffrax", extra="ode", feature="The probability-flow ODE (vdm_jax.evaluation.ode)"
)

__all__ = ["dequantized_bpd", "drift", "evaluate_ode", "log_prob_z0", "nll_continuous"]


def drift(model, params, t, z, *, batch=None):
  """dz/dt of the probability-flow ODE at scalar time t for z `[B, ...]`.

  `batch` (e.g. {"label": `[B]`}) is given to the denoiser: a class-conditional model's ODE
  under those labels; None: its null label.

  `model.gamma_and_derivative(params, t)` may give one gamma per example (`[B]`) or one per
  example and dimension (`[B, ...]` like z): the drift is elementwise,
  dz_d/dt = 1/2 gamma_d'(t) (sigma_{t,d} eps_hat_d - sigma_{t,d}^2 z_d).
  """
  gamma, dgamma = model.gamma_and_derivative(params, jnp.full((z.shape[0],), t))
  eps_hat = model.eps_hat(params, z, gamma, batch=batch)
  _, sigma = schedules.alpha_sigma(_checks.per_example("gamma", gamma, z, batch_name="z"))
  dgamma = _checks.per_example("dgamma_dt", dgamma, z, batch_name="z")
  return 0.5 * dgamma * (sigma * eps_hat - sigma**2 * z)


def _divergence(fn, z, key, exact: bool):
  """(fn(z), div fn(z)) per example; exact via D JVPs, else Hutchinson with Rademacher v."""
  batch = z.shape[0]
  if exact:
    dims = math.prod(z.shape[1:])
    basis = jnp.eye(dims, dtype=z.dtype).reshape((dims, 1) + z.shape[1:])
    out = fn(z)
    jvps = jax.vmap(lambda e: jax.jvp(fn, (z,), (jnp.broadcast_to(e, z.shape),))[1])(basis)
    diag = (jvps * basis).reshape(dims, batch, -1).sum(-1)  # [D, B]
    return out, diag.sum(0)
  v = jax.random.rademacher(key, z.shape, dtype=z.dtype)
  out, jv = jax.jvp(fn, (z,), (v,))
  return out, _checks.sum_except_batch(v * jv)


def log_prob_z0(
  model,
  params,
  z_0,
  key,
  *,
  exact_divergence: bool = False,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  max_steps: int = 4096,
  batch=None,
):
  """log p_0(z_0) `[B]` of the model's probability-flow ODE, in nats.

  Args:
    model: a `vdm_jax.models.VDM` (or anything with `gamma_and_derivative` and `eps_hat`).
    params: its params.
    z_0: latents at t = 0, `[B, ...]`.
    key: `jax.random` key for Hutchinson's probe vectors.
    exact_divergence: exact trace (cost D times more); for low-dimensional data.
    rtol: relative tolerance of the adaptive Tsit5 solver.
    atol: its absolute tolerance.
    max_steps: solver step limit.
    batch: given to the denoiser (`drift`), e.g. {"label": int32 `[B]`}.
  """
  batch_size = z_0.shape[0]

  def vector_field(t, state, args):
    z, _ = state
    fn = lambda u: drift(model, params, t, u, batch=batch)
    out, div = _divergence(fn, z, key, exact_divergence)
    return out, div

  sol = diffrax.diffeqsolve(
    diffrax.ODETerm(vector_field),
    diffrax.Tsit5(),
    t0=0.0,
    t1=1.0,
    dt0=None,
    y0=(z_0, jnp.zeros((batch_size,), z_0.dtype)),
    stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
    max_steps=max_steps,
  )
  z_1, integral = sol.ys[0][0], sol.ys[1][0]
  log_p1 = -0.5 * _checks.sum_except_batch(jnp.square(z_1) + math.log(2.0 * math.pi))
  return log_p1 + integral


def nll_continuous(model, params, x, key, **kwargs):
  """-log p(x) `[B]` in nats for continuous x `[B, ...]`, through z_0 = alpha_0 x.

  `kwargs` go to `log_prob_z0` (tolerances, `batch`: a conditional model's labels).

  With a per-dimension gamma_0 (`[B, ...]` like x) the change of variables has the
  log-determinant sum_d log alpha_{0,d} instead of D log alpha_0.
  """
  gamma_0 = model.gamma(params, jnp.zeros((x.shape[0],)))  # [B], or [B, ...] per dimension
  log_a2, _ = schedules.log_alpha2_sigma2(gamma_0)
  if _checks.is_per_dimension(log_a2, x):
    z_0 = x * jnp.exp(0.5 * log_a2)
    return -(
      log_prob_z0(model, params, z_0, key, **kwargs) + 0.5 * _checks.sum_except_batch(log_a2)
    )
  dims = math.prod(x.shape[1:])
  z_0 = x * jnp.exp(0.5 * _checks.per_example("log_alpha2", log_a2, x))
  return -(log_prob_z0(model, params, z_0, key, **kwargs) + 0.5 * dims * log_a2)


def dequantized_bpd(model, params, k, key, **kwargs):
  """Upper bound on -log2 P(k) per dimension, `[B]`: uniform dequantisation + the ODE.

  A model with an auxiliary latent c (`model.auxiliary_latent`, e.g. `models.AdaptiveVDM`)
  draws one c ~ q(c | k) per example and adds KL(q(c | k) || p(c)) to the ODE's
  -log p(k | c): -log P(k) <= E_q[-log P(k | c)] + KL (docs/adaptive.md).

  Args:
    k: integer data `[B, ...]` in {0..V-1} (V = `model.vocab_size`).
    key: draws the dequantisation noise and Hutchinson's probes (and c).
  """
  latent_kl = 0.0
  if getattr(model, "auxiliary_latent", False):
    key, key_c = jax.random.split(key)
    model, latent_kl = model.condition(params, k, key_c)
  key_u, key_h = jax.random.split(key)
  vocab = model.vocab_size
  x = elbo.encode(k, vocab)
  x = x + jax.random.uniform(key_u, x.shape, minval=-1.0 / vocab, maxval=1.0 / vocab)
  dims = math.prod(x.shape[1:])
  nats = nll_continuous(model, params, x, key_h, **kwargs) - dims * math.log(2.0 / vocab)
  return elbo.bits_per_dim(nats + latent_kl, dims)


# fold_in data of the ELBO pilots' key: never an example index, so never a solve's key.
_PILOT_STREAM = 2**32 - 1


def _elbo_pilots(model, params, config, mesh, *, split, batch_size, key) -> np.ndarray:
  """Nats `[2, N, C]` in split order: two draws of each example's continuous-time ELBO
  under every label, from keys independent of the ODE's dequantisation noise and probes."""
  pilot_key = jax.random.fold_in(key, _PILOT_STREAM)
  return np.stack(
    [
      bpd.per_label_totals(
        model,
        params,
        config,
        mesh,
        key=jax.random.fold_in(pilot_key, draw),
        num_labels=model.num_classes,
        split=split,
        num_steps=0,
        batch_size=batch_size,
      )
      for draw in range(2)
    ]
  )


def evaluate_ode(
  model,
  params,
  config,
  mesh,
  *,
  split: str = "test",
  key=None,
  batch_size: int | None = None,
  exact_divergence: bool | None = None,
  rtol: float = 1e-4,
  atol: float = 1e-4,
  progress: bool = False,
) -> dict:
  """Bits/dim of `split` under the probability-flow ODE (uniform dequantisation, see `ode`).

  `exact_divergence` defaults to exact traces for data of at most 8 dimensions and
  Hutchinson's estimator above. Returns "bpd", "bpd_se", "num_examples" and the settings.

  A class-conditional model (`model.num_classes` = C > 0) is solved under every label 0..C
  (C: the null label), each example's C + 1 solves with the same dequantisation noise and
  probes (paired), so C + 1 times the cost; "bpd" is then the marginal bound
  -log sum_y p(y) P(k | y) with the uniform prior, beside "bpd_conditional" and "bpd_null"
  (`bpd.label_bounds`), and "_per_label" holds the per-label nats `[N, C + 1]`.

  With exact traces and the same dequantisation noise u for every label, the log-sum-exp
  of the per-label values is -log p(k + u) of the label mixture itself: an unbiased
  estimate of its dequantised bound. With Hutchinson's estimator the per-label values are
  noisy and their log-sum-exp is biased low (Jensen's inequality), so the marginal is then
  `bpd.held_out_marginal_nats` with label weights (and the choice between the posterior
  and the label weighting) from the per-label ELBO (two continuous-time passes per label,
  drawn independently of the probes), a bound in expectation; "marginal_weights" says
  which was used.
  """
  if not model.diffusion_time:
    raise ValueError(
      f"The probability-flow ODE needs a diffusion model; this is a {type(model).__name__}. "
      "Use the ELBO (--method=elbo)."
    )
  if exact_divergence is None:
    exact_divergence = model.num_dims <= 8
  batch_size = bpd.balanced_batch_size(
    data.dataset_info(config.data).num_examples[split],
    batch_size or config.eval.batch_size,
    jax.device_count(),
  )
  key = jax.random.key(streams.ode_seed(config.seed)) if key is None else key
  data_sharding = mesh_lib.batch_sharding(mesh)
  num_classes = getattr(model, "num_classes", 0)
  if num_classes and not data.dataset_info(config.data).num_classes:
    raise ValueError(
      f"A class-conditional model needs a labelled split; {config.data.name!r} has no labels."
    )

  def under(p, k, index, label):
    # One solve per example (vmapped): the adaptive step sizes, the dequantisation noise
    # and the probes of example n do not depend on the rest of its batch (or its label).
    batch = None if label is None else {"label": label[None]}
    return dequantized_bpd(
      model,
      p,
      k[None],
      jax.random.fold_in(key, index),
      exact_divergence=exact_divergence,
      rtol=rtol,
      atol=atol,
      batch=batch,
    )[0]

  def per_example(p, k, index):
    if not num_classes:
      return under(p, k, index, None)
    labels = jnp.arange(num_classes + 1, dtype=jnp.int32)  # [C + 1], the null label last
    return jax.vmap(lambda c: under(p, k, index, c))(labels)

  fn = jax.jit(
    jax.vmap(per_example, in_axes=(None, 0, 0)),
    in_shardings=(mesh_lib.replicated(mesh), data_sharding, data_sharding),
    out_shardings=data_sharding,
  )
  values, indices, labels = [], [], []
  for _, glob, mask, index in bpd.global_batches(
    config, split, batch_size, mesh, progress=progress, desc=f"ODE {split}"
  ):
    # One batch's adaptive solves are one compiled call that can run for minutes (small
    # tolerances, large batches): a signal during it stops at once, nothing being written.
    with _signals.exit_at_once("during the ODE evaluation of a batch; nothing was written"):
      values.append(mesh_lib.gather(fn(params, glob["image"], glob["index"]))[mask])
    indices.append(index[mask])
    if num_classes:
      labels.append(np.asarray(mesh_lib.gather(glob["label"]))[mask])
  order = np.argsort(np.concatenate(indices))
  values = np.concatenate(values).astype(np.float64)[order]
  settings = {
    "split": split,
    "exact_divergence": bool(exact_divergence),
    "rtol": rtol,
    "atol": atol,
  }
  if num_classes:
    nats = values * model.num_dims * math.log(2.0)  # [N, C + 1]
    labels = np.concatenate(labels)[order]
    marginal = None
    if not exact_divergence:
      pilots = _elbo_pilots(
        model, params, config, mesh, split=split, batch_size=batch_size, key=key
      )
      marginal, rule = bpd.held_out_marginal_nats(nats[:, :num_classes], pilots, labels)
    settings["marginal_weights"] = "exact" if exact_divergence else f"per-label ELBO: {rule}"
    bounds = bpd.label_bounds(nats, labels, model.num_dims, marginal=marginal)
    return bounds | {"num_examples": int(nats.shape[0]), "_per_label": nats} | settings
  return {
    "bpd": float(values.mean()),
    "bpd_se": float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan,
    "num_examples": int(values.size),
  } | settings
