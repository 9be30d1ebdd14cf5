"""Test bits/dim of a trained VDM (or Gaussian VAE), exactly and with error bars (`vdm-evaluate`).

  vdm-evaluate --workdir=runs/digits
  vdm-evaluate --workdir=runs/digits --num_steps=1000 --exact_time_sum --passes=3
  vdm-evaluate --workdir=runs/digits --method=ode
  vdm-evaluate --workdir=runs/digits --config.data.name=photos_gray   # another dataset
  vdm-evaluate --workdir=runs/digits_cond --classify   # a class-conditional model

The run's recorded config (<workdir>/config.json) is used; --config.<field> overrides
apply to it, and a --config given (a name, a .py file or a config.json) is checked against
it: fields that change what the checkpoint means (model, schedule, T of the loss, a dataset
of another shape) are refused, evaluation options, data.data_dir and model.dtype may change.
Loads the EMA parameters of the latest checkpoint (or --step) onto the current devices,
visits every example of the split once per pass in a fixed order (the last batch padded
and masked), and prints a table; writes JSON (--output), and for the ELBO a CSV and a PNG
of the diffusion term decomposed over t.

--classify (class-conditional models): the ELBO of every example under every label, with
the same t and noise for all labels (--passes: the mean of P draws per label); prints the
marginal bound (the headline bits/dim), the
conditional and null-label bounds, the ELBO classifier's accuracy with its standard error
and the confusion table; JSON keys "bpd", "bpd_conditional", "bpd_null", "accuracy",
"accuracy_se", "confusion".
"""

from absl import flags

from vdm_jax import _cli

_RUN = _cli.define_run_flags()
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_METHOD = flags.DEFINE_enum("method", "elbo", ["elbo", "ode"], "ELBO or probability-flow ODE.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "T for the ELBO (0 = continuous time).")
_PASSES = flags.DEFINE_integer("passes", 1, "Passes over the split (ELBO).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size.")
_EXACT = flags.DEFINE_bool("exact_time_sum", False, "Sum the diffusion term over all T steps.")
_NUM_BINS = flags.DEFINE_integer("num_bins", 20, "Bins of t for the decomposition (sampled t).")
_ODE_TOL = flags.DEFINE_float("ode_tol", 1e-4, "rtol = atol of the ODE solver (--method=ode).")
_SEED = flags.DEFINE_integer(
  "seed",
  None,
  "Seed of t, noise and dequantisation (default: the run's, config.seed + 1, which the "
  "evaluation at the end of training used: the same bits/dim on the same checkpoint).",
)
_OUTPUT = flags.DEFINE_string("output", None, "JSON output (default: in the workdir).")
_CLASSIFY = flags.DEFINE_bool(
  "classify", False, "Class-conditional models: bounds per label and the ELBO classifier."
)
_LAUNCH = _cli.define_launch_flags()
flags.mark_flags_as_required(["workdir"])
for _name in ["passes", "num_bins"]:
  _cli.check_flag_range(_name, minimum=1)
_cli.check_flag_range("batch_size", minimum=1, optional=True)
_cli.check_flag_range("num_steps", minimum=0, optional=True)
# rtol = atol: float32 cannot resolve a relative error below its epsilon (2**-23), and a
# tolerance of 1 or more bounds nothing.
_cli.check_flag_range("ode_tol", minimum=2**-23, maximum=1, why="float32's epsilon to 1")
_cli.check_output_flag("output")
_cli.check_flag_range("seed", minimum=0, optional=True)


def main(argv):
  _cli.start(argv, _LAUNCH, _RUN.config.value)
  import jax

  from vdm_jax.evaluation import report

  run_ = _RUN.load()
  if _CLASSIFY.value:
    from vdm_jax.evaluation import classify

    result = classify.classify_checkpoint(
      run_,
      split=_SPLIT.value,
      num_steps=_NUM_STEPS.value,
      batch_size=_BATCH_SIZE.value,
      seed=_SEED.value,
      output=_OUTPUT.value,
      passes=_PASSES.value,
    )
    render = lambda r: f"{classify.render(r)}\n  JSON: {r['files']['JSON']}"
  else:
    result = report.evaluate_checkpoint(
      run_,
      split=_SPLIT.value,
      method=_METHOD.value,
      num_steps=_NUM_STEPS.value,
      passes=_PASSES.value,
      batch_size=_BATCH_SIZE.value,
      exact_time_sum=_EXACT.value,
      num_bins=_NUM_BINS.value,
      ode_tol=_ODE_TOL.value,
      seed=_SEED.value,
      output=_OUTPUT.value,
      command=_cli.reproduce_command(run_.step),
    )
    render = report.render_evaluation
  if jax.process_index() == 0:  # the others wrote nothing
    print(render(result))


def run():
  _cli.run(main, reads_run=True)


if __name__ == "__main__":
  run()
