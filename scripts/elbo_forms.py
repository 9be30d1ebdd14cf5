"""The derivation's ELBO forms side by side: same -ELBO, different Monte Carlo variance.

  vdm-elbo-forms --target=gaussian
  vdm-elbo-forms --target=checkpoint --workdir=runs/digits

The forms, the targets and the columns are described in `vdm_jax.evaluation.elbo_forms`.
"""

from absl import flags

from vdm_jax import _cli

_TARGET = flags.DEFINE_enum("target", "gaussian", ["gaussian", "checkpoint"], "What to measure.")
_RUN = _cli.define_run_flags(
  "Training run directory (checkpoint).",
  config_help="checkpoint: default the run's record.",
  required=False,
)
_SPLIT = flags.DEFINE_string("split", "test", "Split whose first examples are used (checkpoint).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 16, "N, the number of latent steps.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Trajectories per example.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 64, "Examples.")
_CHUNK = flags.DEFINE_integer("chunk", 8, "Trajectories per example per jitted call.")
_LITERAL = flags.DEFINE_bool(
  "literal", True, "Also the derivation's literal (biased) consistency form."
)
_ONE_STEP = flags.DEFINE_bool("one_step", True, "Also VDM's one-random-step estimator.")
_SHARE = flags.DEFINE_bool(
  "share_denoiser", True, "One denoiser call per trajectory point for all N-call forms."
)
_GAMMA_MIN = flags.DEFINE_float("gamma_min", -6.0, "gamma(0) (gaussian).")
_GAMMA_MAX = flags.DEFINE_float("gamma_max", 6.0, "gamma(1) (gaussian).")
_DIMS = flags.DEFINE_integer("dims", 64, "Data dimensions (gaussian).")
_MODELS = flags.DEFINE_list(
  "gaussian_models", ["optimal", "half", "zero"], "Denoisers (gaussian): optimal, half, zero."
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT = flags.DEFINE_string(
  "output", None, "JSON written (default: runs/elbo_forms_<target>.json under the current folder)."
)

for _name in ["num_steps", "num_samples", "num_examples", "chunk", "dims"]:
  _cli.check_flag_range(_name, minimum=1)
_cli.check_flag_range("seed", minimum=0)
_cli.check_output_flag("output")


def main(argv):
  _cli.start(argv, config=_RUN.config.value)
  from vdm_jax.evaluation import elbo_forms

  result = elbo_forms.compare_forms(
    _TARGET.value,
    config=_RUN.config.value,
    workdir=_RUN.workdir.value,
    step=_RUN.step.value,
    split=_SPLIT.value,
    num_steps=_NUM_STEPS.value,
    num_samples=_NUM_SAMPLES.value,
    num_examples=_NUM_EXAMPLES.value,
    chunk=_CHUNK.value,
    literal=_LITERAL.value,
    one_step=_ONE_STEP.value,
    share_denoiser=_SHARE.value,
    gamma_min=_GAMMA_MIN.value,
    gamma_max=_GAMMA_MAX.value,
    dims=_DIMS.value,
    gaussian_models=_MODELS.value,
    seed=_SEED.value,
    command=_cli.reproduce_command(),
  )
  print(elbo_forms.render(result))
  output = _OUTPUT.value or f"runs/elbo_forms_{_TARGET.value}.json"
  print(f"wrote {elbo_forms.write_result(result, output)}")


def run():
  _cli.run(main, reads_run=True)


if __name__ == "__main__":
  run()
