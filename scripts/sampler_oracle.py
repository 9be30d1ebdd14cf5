"""Sampler error on the exact distribution: a benchmark that prints a table (not a test).

  python scripts/sampler_oracle.py --output=docs/img/sampler_oracle

For ancestral, DDIM and DPM-Solver++(2M) at each of --steps, draws --num_samples samples
with the Bayes-optimal denoiser of the 2-D toy mixture (`vdm_jax.testing.OracleVDM`, linear
schedule gamma in [-13.3, 5]) and prints their energy distance to as many exact draws (with
the exact-vs-exact noise floor) and their mean exact log density; writes
<output>.json and <output>.png (distance against steps). --digits_timing also times 64
samples of an initialised digits model (configs/digits.py) at 20 DPM-Solver steps and 1000
ancestral steps.
"""

import json
import os

from absl import flags

from vdm_jax import _cli

_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 4000, "Samples per sampler and step count.")
_FLOOR_PAIRS = flags.DEFINE_integer("floor_pairs", 5, "Exact-vs-exact pairs for the floor.")
_STEPS = flags.DEFINE_list("steps", ["5", "10", "20", "50", "100", "1000"], "Step counts.")
_METHODS = flags.DEFINE_list("methods", ["ancestral", "ddim", "dpm_solver"], "Samplers.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_DIGITS_TIMING = flags.DEFINE_bool("digits_timing", False, "Also time 64 digits samples.")
_OUTPUT = flags.DEFINE_string("output", None, "Prefix of the .json and .png written.")
for _name in ["num_samples", "floor_pairs"]:
  _cli.check_flag_range(_name, minimum=2)
_cli.check_flag_range("seed", minimum=0)


def main(argv):
  _cli.start(argv)
  from vdm_jax import sampling
  from vdm_jax.evaluation import sampler_error

  unknown = sorted(set(_METHODS.value) - set(sampling.METHODS))
  if unknown:
    raise ValueError(f"--methods: unknown {unknown}; choose from {list(sampling.METHODS)}.")
  try:
    steps = [int(s) for s in _STEPS.value]
  except ValueError:
    raise ValueError(f"--steps must be positive integers, got {_STEPS.value}.") from None
  if min(steps) < 1:
    raise ValueError(f"--steps must be positive integers, got {_STEPS.value}.")
  result = sampler_error.measure(
    methods=tuple(_METHODS.value),
    steps=tuple(steps),
    num_samples=_NUM_SAMPLES.value,
    floor_pairs=_FLOOR_PAIRS.value,
    seed=_SEED.value,
  )
  if _DIGITS_TIMING.value:
    import importlib

    digits = importlib.import_module(_cli.CONFIGS_PACKAGE + ".digits").get_config()
    result["digits_timing"] = sampler_error.time_digits_sampling(digits)
  print(sampler_error.render(result))
  if _OUTPUT.value:
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value + ".json", "w") as f:
      json.dump(result, f, indent=1)
    sampler_error.save_plot(result, _OUTPUT.value + ".png")
    print(f"wrote {_OUTPUT.value}.json and {_OUTPUT.value}.png")


if __name__ == "__main__":
  _cli.run(main)
