"""Evaluation (README "Layout": layer 5): bits/dim with error bars, sampling, diagnostics.

* `bpd`: the ELBO in bits/dim of a split, batch- and device-invariant (`evaluate`), the
  exact sum over T steps on the device, the decomposition over t.
* `ode`: bits/dim under the probability-flow ODE (needs the `ode` extra: diffrax).
* `checkpoint_samples`: samples of a checkpoint split over the devices, PNG grids
  (`images`); called `sampling` before (that name imports with a warning: the samplers'
  mathematics is `vdm_jax.sampling`).
* `diagnostics`: the variance of the ELBO estimate under four time samplers.
* `runs`: `load_run(workdir)`, a trained run (model, EMA params, config, step) from its
  work directory alone, the config checked against the run's record.
* `report`: the tables and JSON of `vdm-evaluate`.
* `certify`, `elbo_forms`, `codecs`: the exactness check, five estimators of the same
  ELBO side by side (the derivation's two forms among them), bits/dim of standard image codecs.

The checkpoint a function evaluates is loaded with `load_run` (which reads only the EMA
parameters: `runtime.checkpoints.load_ema_params`).
"""

from vdm_jax.evaluation.bpd import (
  diffusion_by_time,
  eval_step,
  evaluate,
  exact_time_sum_step,
  global_batches,
  jit_eval_step,
  jit_exact_time_sum,
  per_example_terms,
  public,
  scalar_summary,
  split_times,
  summarize,
)
from vdm_jax.evaluation.checkpoint_samples import draw_samples, write_sample_grid
from vdm_jax.evaluation.diagnostics import time_sampling_variance
from vdm_jax.evaluation.runs import Run, check_against_record, load_run

__all__ = [
  "Run",
  "check_against_record",
  "diffusion_by_time",
  "draw_samples",
  "eval_step",
  "evaluate",
  "exact_time_sum_step",
  "global_batches",
  "jit_eval_step",
  "jit_exact_time_sum",
  "load_run",
  "per_example_terms",
  "public",
  "scalar_summary",
  "split_times",
  "summarize",
  "time_sampling_variance",
  "write_sample_grid",
]
