"""Variance of the ELBO estimator under four ways of drawing t, for a trained VDM.

  python scripts/time_variance.py --config=configs/digits.py --workdir=runs/digits

For the first --num_examples test examples, draws t and noise --reps times with each
scheme (i.i.d. uniform, antithetic, importance sampling with a sqrt(E[L^2]) proposal per
t-bin from a pilot run, and both) and prints the mean bits/dim and the variances of the
batch mean and of one example's estimate; writes JSON. All four estimate the same ELBO.
"""

import json
import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of the training run.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 256, "Test examples in the batch.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "T (0 = continuous time).")
_NUM_BINS = flags.DEFINE_integer("num_bins", 32, "Bins of the proposal (continuous time).")
_REPS = flags.DEFINE_integer("reps", 32, "Repetitions per scheme.")
_PILOT = flags.DEFINE_integer("pilot", 16, "Uniform draws that estimate the proposal.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON output (default: in the workdir).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vdm_jax._cli import quiet_logging

  quiet_logging()
  import time

  import jax
  import numpy as np

  from vdm_jax import data, evaluation, train

  config = _CONFIG.value
  vdm, _, params, step = train.load_ema_params(config, _WORKDIR.value)
  batches = data.eval_batches(config.data, "test", global_batch_size=_NUM_EXAMPLES.value)
  first = next(iter(batches))
  k = jax.numpy.asarray(np.asarray(first["image"])[np.asarray(first["mask"]) > 0])
  start = time.perf_counter()
  result = evaluation.time_sampling_variance(
    vdm,
    params,
    k,
    jax.random.key(_SEED.value),
    num_steps=_NUM_STEPS.value,
    num_bins=_NUM_BINS.value,
    reps=_REPS.value,
    pilot=_PILOT.value,
  )
  result |= {"checkpoint_step": step, "seconds": time.perf_counter() - start}
  result |= {"schedule": config.schedule.kind, "schedule_objective": config.schedule.objective}
  output = _OUTPUT.value or os.path.join(_WORKDIR.value, f"time_variance_T{_NUM_STEPS.value}.json")
  with open(output, "w") as f:
    json.dump(result, f, indent=2)
  base = result["antithetic"]["var_batch_mean"]
  print(
    f"{config.data.name}, step {step}, schedule {config.schedule.kind} "
    f"({config.schedule.objective}), T={_NUM_STEPS.value}, {result['num_examples']} examples, "
    f"{_REPS.value} draws per scheme"
  )
  print(
    f"{'scheme':<24}{'bits/dim':>10}{'var(batch mean)':>18}{'var(example)':>15}{'vs antithetic':>15}"
  )
  for scheme in ("uniform", "antithetic", "importance", "importance_antithetic"):
    r = result[scheme]
    print(
      f"{scheme:<24}{r['bpd']:>10.4f}{r['var_batch_mean']:>18.3e}{r['var_per_example']:>15.3e}"
      f"{base / r['var_batch_mean']:>14.2f}x"
    )
  print(f"({result['seconds']:.1f} s) JSON: {output}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
