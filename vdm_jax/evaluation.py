"""Bits/dim of a split, one exact pass: every example once, fixed order, padded and masked.

Each example's ELBO is estimated with one sampled t (and noise); the reported error bar
is the standard error of the mean over examples (the spread of per-example estimates,
which includes the Monte Carlo noise of t and eps).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vdm_jax import data
from vdm_jax.vdm import TERMS, VDM

OUTPUTS = (*TERMS, "total")


def eval_step(params, batch: dict, key, *, vdm: VDM, num_steps: int):
  """Per-example ELBO terms (nats, `[B]`) of a batch with the given params. Pure; jit it."""
  terms = vdm.loss_terms(params, batch["image"], key, train=False, num_steps=num_steps)
  return {name: terms[name] for name in OUTPUTS}


def jit_eval_step(vdm: VDM, mesh, num_steps: int):
  data_sharding = NamedSharding(mesh, P("data"))
  return jax.jit(
    lambda params, batch, key: eval_step(params, batch, key, vdm=vdm, num_steps=num_steps),
    in_shardings=(NamedSharding(mesh, P()), data_sharding, NamedSharding(mesh, P())),
    out_shardings=data_sharding,
  )


def per_example_terms(
  vdm: VDM,
  params,
  config,
  mesh,
  *,
  split: str,
  num_steps: int | None = None,
  key=None,
  batch_size: int | None = None,
) -> dict:
  """One pass over `split`: per-example terms in nats, numpy `[N]` each, in split order."""
  from vdm_jax.train import to_global  # local: train imports this module

  num_steps = config.loss.num_steps if num_steps is None else num_steps
  batch_size = batch_size or config.eval.batch_size
  key = jax.random.key(config.seed + 1) if key is None else key
  step = jit_eval_step(vdm, mesh, num_steps)
  out = {name: [] for name in OUTPUTS}
  for i, batch in enumerate(data.eval_batches(config.data, split, global_batch_size=batch_size)):
    mask = np.asarray(batch.pop("mask")) > 0
    terms = step(params, to_global(batch, mesh), jax.random.fold_in(key, i))
    terms = multihost_utils.process_allgather(terms, tiled=True)
    mask = multihost_utils.process_allgather(mask, tiled=True)
    for name in OUTPUTS:
      out[name].append(np.asarray(terms[name], np.float64)[mask])
  return {name: np.concatenate(v) for name, v in out.items()}


def summarize(terms: dict, num_dims: int) -> dict:
  """Mean bits/dim with its standard error over examples, and each term's mean in bits/dim."""
  to_bpd = 1.0 / (num_dims * math.log(2.0))
  total = terms["total"] * to_bpd
  n = total.size
  result = {
    "bpd": float(total.mean()),
    "bpd_se": float(total.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
    "num_examples": int(n),
  }
  for name in TERMS:
    result[f"{name}_bpd"] = float(terms[name].mean() * to_bpd)
  return result


def evaluate(
  vdm: VDM, params, config, mesh, *, split: str = "test", num_steps: int | None = None, key=None
) -> dict:
  """Bits/dim of `split` with `params` (use the EMA params): see `summarize`."""
  terms = per_example_terms(vdm, params, config, mesh, split=split, num_steps=num_steps, key=key)
  result = summarize(terms, vdm.num_dims)
  result["num_steps"] = config.loss.num_steps if num_steps is None else num_steps
  result["split"] = split
  return result


def scalar_summary(result: dict) -> dict:
  return {k: v for k, v in result.items() if k in ("bpd", "bpd_se", *(f"{t}_bpd" for t in TERMS))}
