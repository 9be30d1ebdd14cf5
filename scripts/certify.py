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
  import jax

  from vdm_jax import _deps

  matplotlib = _deps.require("matplotlib", extra="plots", feature="scripts/certify.py")
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from vdm_jax import schedules, testing
  from vdm_jax.data import toy2d
  from vdm_jax.evaluation import certify
  from vdm_jax.runtime import workdir

  cls = {"linear": schedules.LinearSchedule, "cosine": schedules.CosineSchedule}[_SCHEDULE.value]
  schedule = cls(_GAMMA_MIN.value, _GAMMA_MAX.value)
  data = testing.GaussianMixture(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)
  x = toy2d.sample(_NUM_EXAMPLES.value, _SEED.value)
  steps = tuple(2**k for k in range(_MAX_LOG2_STEPS.value + 1))
  rows = certify.certify(
    jax.random.key(_SEED.value), data, x, schedule, steps=steps, num_samples=_NUM_SAMPLES.value
  )
  print(f"{schedule}; {len(x)} points of the toy2d mixture; exact -log p(x) = {rows[0]['nll']:.4f}")
  print(f"{'T':>6} {'ELBO':>12} {'gap':>12} {'+-':>8}  (nats per example)")
  for r in rows:
    name = "cont." if r["T"] == 0 else str(r["T"])
    print(f"{name:>6} {r['elbo']:12.4f} {r['gap']:12.4f} {r['gap_se']:8.4f}")
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  with open(os.path.join(_OUTPUT_DIR.value, "certify.json"), "w") as f:
    f.write(workdir.dumps_strict({"schedule": repr(schedule), "rows": rows}, indent=2))
  discrete = [r for r in rows if r["T"] > 0]
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.errorbar(
    [r["T"] for r in discrete],
    [r["gap"] for r in discrete],
    yerr=[r["gap_se"] for r in discrete],
    marker="o",
  )
  cont = rows[-1]
  # A log axis cannot show a gap that is zero within its error: show its 2-SE upper bound.
  bound = abs(cont["gap"]) + 2 * cont["gap_se"]
  label = f"continuous time: gap {cont['gap']:.3f} +- {cont['gap_se']:.3f}, |gap| below this line"
  ax.axhline(bound, color="k", linestyle="--", label=label)
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("T")
  ax.set_ylabel("ELBO - exact NLL (nats)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(_OUTPUT_DIR.value, "certify.png"), dpi=120)
  print(f"wrote {_OUTPUT_DIR.value}/certify.json and certify.png")


def run():
  _cli.run(main)


if __name__ == "__main__":
  run()
