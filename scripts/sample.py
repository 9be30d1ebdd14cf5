"""Draw samples from a trained VDM (or Gaussian VAE) and write a PNG grid and an .npz (`vdm-sample`).

  vdm-sample --workdir=runs/digits --num_samples=64 --num_steps=1000 --method=ancestral

The run's recorded config (<workdir>/config.json) is used (a --config given is checked
against it, as by vdm-evaluate).

ancestral: the derivation's reverse process p(z_s|z_t) = N(mu_theta, sigma_q^2) with T steps;
ddim: the deterministic DDIM update; dpm_solver: DPM-Solver++(2M), a deterministic
second-order solver of the probability-flow ODE for few steps (e.g. --num_steps=20). Integer data from the exact discrete decoder.
"""

from absl import flags

from vdm_jax import _cli

_RUN = _cli.define_run_flags()
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Number of samples.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1000, "Reverse steps T.")
_METHOD = flags.DEFINE_enum(
  "method", "ancestral", ["ancestral", "ddim", "dpm_solver"], "Sampler (one network call a step)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_LABEL = flags.DEFINE_integer(
  "label", None, "Class-conditional models: the class K of every sample (default: unconditional)."
)
_GUIDANCE = flags.DEFINE_float(
  "guidance", 0.0, "Classifier-free guidance weight W >= 0 (with --label; 0 = unguided)."
)
_OUTPUT = flags.DEFINE_string("output", None, "Output path prefix (default: in the workdir).")
_LAUNCH = _cli.define_launch_flags()
flags.mark_flags_as_required(["workdir"])
for _name in ["num_samples", "num_steps"]:
  _cli.check_flag_range(_name, minimum=1)
_cli.check_flag_range("seed", minimum=0)
_cli.check_flag_range("label", minimum=0, optional=True)
_cli.check_flag_range("guidance", minimum=0)
_cli.check_output_flag("output", prefix=True)


def main(argv):
  _cli.start(argv, _LAUNCH, _RUN.config.value)
  import jax

  from vdm_jax.evaluation import checkpoint_samples

  run_ = _RUN.load()
  result = checkpoint_samples.sample_checkpoint(
    run_,
    num_samples=_NUM_SAMPLES.value,
    num_steps=_NUM_STEPS.value,
    method=_METHOD.value,
    seed=_SEED.value,
    output=_OUTPUT.value,
    label=_LABEL.value,
    guidance=_GUIDANCE.value,
  )
  if jax.process_index() == 0:
    print(checkpoint_samples.render_samples(result))


def run():
  _cli.run(main, reads_run=True)


if __name__ == "__main__":
  run()
