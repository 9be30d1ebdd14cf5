"""PNGs of a class-conditional model's guided samples: a row per class, one file per W.

  vdm-class-grid --workdir=runs/digits_cond --guidance=0,1,3 --output=grid_w{w}.png

Row y holds --per_class samples of class y drawn with DPM-Solver++ 2M in --num_steps
steps, guided by weight W (`sampling.guided_eps`), decoded with the exact decoder. Sample
n of every row and every W starts from the key `fold_in(key(seed), n)`, the draw
`vdm-sample --method=dpm_solver --label=y --guidance=W --seed=seed` makes for its sample
n. All classes and weights run through one compiled function (labels and W are its
inputs), so the grids cost one compilation, not one per class and weight.
"""

from absl import flags

from vdm_jax import _cli

_RUN = _cli.define_run_flags("Work directory of a class-conditional run.")
_GUIDANCE = flags.DEFINE_list("guidance", ["0"], "Guidance weights W >= 0, one PNG each.")
_PER_CLASS = flags.DEFINE_integer("per_class", 8, "Samples per class (one row each).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 20, "DPM-Solver steps T.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_SCALE = flags.DEFINE_integer("scale", 3, "Pixels per data pixel in the PNG.")
_OUTPUT = flags.DEFINE_string("output", None, "PNG path; {w} is replaced by each W.")
flags.mark_flags_as_required(["output"])
for _name in ["per_class", "num_steps", "scale"]:
  _cli.check_flag_range(_name, minimum=1)
_cli.check_flag_range("seed", minimum=0)
_cli.check_output_flag("output")


def _weights(values) -> list[float]:
  """--guidance as floats; raises ValueError naming the value that is not a number >= 0."""
  weights = []
  for value in values:
    try:
      weights.append(float(value))
    except ValueError:
      raise ValueError(f"--guidance: {value!r} is not a number") from None
    if not weights[-1] >= 0:
      raise ValueError(f"--guidance: every W must be >= 0, got {value}")
  return weights


@flags.multi_flags_validator(["guidance", "output"])
def _check_guidance(values) -> bool:
  try:
    weights = _weights(values["guidance"])
  except ValueError as e:
    raise flags.ValidationError(f"{e}.") from None
  if len(weights) > 1 and values["output"] and "{w}" not in values["output"]:
    raise flags.ValidationError(
      f"--output={values['output']} has no {{w}}: the {len(weights)} grids of --guidance "
      "would overwrite each other (e.g. --output=grid_w{w}.png)."
    )
  return True


def main(argv):
  _cli.start(argv, None, _RUN.config.value)
  from vdm_jax.evaluation import checkpoint_samples

  run_ = _RUN.load()
  result = checkpoint_samples.class_grids(
    run_,
    output=_OUTPUT.value,
    guidance=_weights(_GUIDANCE.value),
    per_class=_PER_CLASS.value,
    num_steps=_NUM_STEPS.value,
    seed=_SEED.value,
    scale=_SCALE.value,
  )
  print(checkpoint_samples.render_class_grids(result))


def run():
  _cli.run(main, reads_run=True)


if __name__ == "__main__":
  run()
