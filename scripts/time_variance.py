"""Variance of the ELBO estimator under four ways of drawing t, for a trained VDM.

  vdm-time-variance --workdir=runs/digits

For the first --num_examples test examples, draws t and noise --reps times with each
scheme (i.i.d. uniform, antithetic, importance sampling with a sqrt(E[L^2]) proposal per
t-bin from a pilot run, and both) and prints the mean bits/dim and the variances of the
batch mean and of one example's estimate; writes JSON. All four estimate the same ELBO.
"""

from absl import flags

from vdm_jax import _cli

_RUN = _cli.define_run_flags()
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 256, "Test examples in the batch.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 0, "T (0 = continuous time).")
_NUM_BINS = flags.DEFINE_integer("num_bins", 32, "Bins of the proposal (continuous time).")
_REPS = flags.DEFINE_integer("reps", 32, "Repetitions per scheme.")
_PILOT = flags.DEFINE_integer("pilot", 16, "Uniform draws that estimate the proposal.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON output (default: in the workdir).")
flags.mark_flags_as_required(["workdir"])
for _name in ["num_examples", "num_bins", "reps", "pilot"]:
  _cli.check_flag_range(_name, minimum=1)
for _name in ["num_steps", "seed"]:
  _cli.check_flag_range(_name, minimum=0)
_cli.check_output_flag("output")


def main(argv):
  _cli.start(argv, config=_RUN.config.value)
  from vdm_jax.evaluation import diagnostics
  from vdm_jax.runtime import workdir

  run_ = _RUN.load()
  result = diagnostics.time_variance_of_run(
    run_,
    num_examples=_NUM_EXAMPLES.value,
    num_steps=_NUM_STEPS.value,
    num_bins=_NUM_BINS.value,
    reps=_REPS.value,
    pilot=_PILOT.value,
    seed=_SEED.value,
  )
  output = _OUTPUT.value or diagnostics.time_variance_path(run_.workdir, _NUM_STEPS.value)
  workdir.write_json_atomic(output, workdir.dumps_strict(result, indent=2))
  print(diagnostics.render_time_variance(result))
  print(f"JSON: {output}")


def run():
  _cli.run(main, reads_run=True)


if __name__ == "__main__":
  run()
