"""Variance of the ELBO estimator under four ways of drawing t, for a trained VDM.

  python scripts/time_variance.py --config=configs/digits.py --workdir=runs/digits

For the first --num_examples test examples, draws t and noise --reps times with each
scheme (i.i.d. uniform, antithetic, importance sampling with a sqrt(E[L^2]) proposal per
t-bin from a pilot run, and both) and prints the mean bits/dim and the variances of the
batch mean and of one example's estimate; writes JSON. All four estimate the same ELBO.
"""

from absl import app, flags
from ml_collections import config_flags

from vdm_jax import _cli

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
  _cli.start(argv)
  from vdm_jax.evaluation import diagnostics

  diagnostics.time_variance_report(
    _CONFIG.value,
    _WORKDIR.value,
    num_examples=_NUM_EXAMPLES.value,
    num_steps=_NUM_STEPS.value,
    num_bins=_NUM_BINS.value,
    reps=_REPS.value,
    pilot=_PILOT.value,
    seed=_SEED.value,
    output=_OUTPUT.value,
  )


def run():
  app.run(main)


if __name__ == "__main__":
  run()
