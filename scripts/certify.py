"""Certify the ELBO with a Bayes-optimal denoiser: exact NLL vs discrete and continuous ELBO.

  vdm-certify --schedule=linear --gamma_min=-13.3 --gamma_max=13.3

Data: the 2-D Gaussian mixture of the toy2d set (continuous), whose optimal denoiser and
density are closed form. Prints, for T = 1, 2, 4, ..., 1024 and continuous time, the ELBO
and its gap to the exact -log p(x) (nats per example, with standard errors), and writes
the table as JSON and the gap against T as a PNG. No training is involved: the gap must
shrink as T doubles, and in continuous time vanish up to Monte Carlo error and the
schedule's end-point terms.
"""

import os

from absl import flags

from vdm_jax import _cli

_SCHEDULE = flags.DEFINE_enum("schedule", "linear", ["linear", "cosine"], "Noise schedule.")
_GAMMA_MIN = flags.DEFINE_float("gamma_min", -13.3, "gamma(0).")
_GAMMA_MAX = flags.DEFINE_float("gamma_max", 13.3, "gamma(1).")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 512, "Data points x.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Noise draws per example and step.")
_MAX_LOG2_STEPS = flags.DEFINE_integer("max_log2_steps", 10, "Largest T is 2^this.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/certify", "Where to write JSON and PNG.")

for _name in ["num_examples", "num_samples"]:
  _cli.check_flag_range(_name, minimum=1)
_cli.check_flag_range("max_log2_steps", minimum=0)
_cli.check_flag_range("seed", minimum=0)
_cli.check_output_flag("output_dir", directory=True)


def main(argv):
  _cli.start(argv)
  from vdm_jax import _deps

  _deps.require("matplotlib", extra="plots", feature="scripts/certify.py")  # before the work
  from vdm_jax.evaluation import certify
  from vdm_jax.runtime import workdir

  result = certify.certify_toy2d(
    schedule=_SCHEDULE.value,
    gamma_min=_GAMMA_MIN.value,
    gamma_max=_GAMMA_MAX.value,
    num_examples=_NUM_EXAMPLES.value,
    num_samples=_NUM_SAMPLES.value,
    max_log2_steps=_MAX_LOG2_STEPS.value,
    seed=_SEED.value,
  )
  print(certify.render(result))
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  path = os.path.join(_OUTPUT_DIR.value, "certify")
  workdir.write_json_atomic(path + ".json", workdir.dumps_strict(result, indent=2))
  certify.save_plot(result, path + ".png")
  print(f"wrote {path}.json and {path}.png")


def run():
  _cli.run(main)


if __name__ == "__main__":
  run()
