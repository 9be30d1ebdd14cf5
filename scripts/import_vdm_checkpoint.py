"""Import a checkpoint of google-research/vdm as a work directory (`vdm-import-vdm-checkpoint`).

  gsutil -m cp -r gs://gresearch/vdm/cifar10/checkpoint-final .
  vdm-import-vdm-checkpoint --checkpoint=checkpoint-final/checkpoints-0 --workdir=runs/vdm_cifar10
  vdm-evaluate --workdir=runs/vdm_cifar10

--checkpoint is the folder the reference wrote (its latest ckpt-N.flax, as named by its
`checkpoint` file, is read) or one ckpt-N.flax file. The architecture (n_layer, n_embd,
Fourier features, attention, the schedule type) is read from the weights' shapes; the
reference config's gamma_min and gamma_max are not stored in the checkpoint: give them
with --gamma_min/--gamma_max if its training config changed them from -13.3 and 5.0.
The data set is --config.data.name (default cifar10, the published checkpoints'); other
fields of the recorded config come from --config (default: the packaged cifar10 config)
and its overrides. The EMA parameters become the new run's params and EMA params at the
reference's step. Nothing is written unless every array maps onto the model; the work
directory appears complete or not at all. docs/reference_checkpoints.md has the details.
"""

import sys

from absl import flags

from vdm_jax import _cli

_CONFIG = _cli.define_config(
  "Config to record (data set, evaluation and training settings). Default: cifar10.",
  required=False,
)
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "The reference's checkpoint folder (e.g. checkpoints-0) or a ckpt-N.flax."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The work directory to create (new or empty).")
_GAMMA_MIN = flags.DEFINE_float(
  "gamma_min", -13.3, "The reference config's model.gamma_min (normalises gamma in its network)."
)
_GAMMA_MAX = flags.DEFINE_float("gamma_max", 5.0, "The reference config's model.gamma_max.")
flags.mark_flags_as_required(["checkpoint", "workdir"])
flags.register_validator(
  "gamma_max",
  lambda v: v is not None and abs(v) < float("inf"),
  "--gamma_max must be a finite number.",
)
flags.register_validator(
  "gamma_min",
  lambda v: v is not None and abs(v) < float("inf"),
  "--gamma_min must be a finite number.",
)
flags.register_multi_flags_validator(
  ["gamma_min", "gamma_max"],
  lambda f: f["gamma_min"] is None or f["gamma_max"] is None or f["gamma_min"] < f["gamma_max"],
  "--gamma_min must be below --gamma_max.",
)

DEFAULT_CONFIG = "cifar10"


def _refuse_inferred_overrides(argv) -> None:
  """A --config.<field> override of a field read from the checkpoint is refused."""
  from vdm_jax.training import reference_checkpoint

  for arg in argv[1:]:
    name = arg.split("=", 1)[0].removeprefix("--").removeprefix("no")
    field = name.removeprefix("config.")
    if name.startswith("config.") and field in reference_checkpoint.INFERRED_FIELDS:
      if field.startswith("schedule.gamma_"):
        flag = field.removeprefix("schedule.")
        raise ValueError(f"--config.{field} is set by the importer: use --{flag} instead.")
      raise ValueError(
        f"--config.{field} is set by the importer from the checkpoint's weights; leave it out."
      )


def main(argv):
  _cli.start(argv, config=_CONFIG.value)
  from vdm_jax import data
  from vdm_jax.training import reference_checkpoint

  _refuse_inferred_overrides(_cli._TYPED_ARGV or sys.argv)
  config = _CONFIG.value
  config.unlock()
  config.schedule.gamma_min, config.schedule.gamma_max = _GAMMA_MIN.value, _GAMMA_MAX.value
  summary = reference_checkpoint.import_checkpoint(_CHECKPOINT.value, _WORKDIR.value, config)
  print(reference_checkpoint.describe(summary))
  try:
    data.prepare(config.data)
  except FileNotFoundError as e:
    print(f"\nnote: evaluating it needs the data set first. {e}")


def run():
  # --config defaults to the packaged cifar10 config (the published checkpoints' data).
  if not any(a == "--config" or a.startswith("--config=") for a in sys.argv[1:]) and not any(
    a in ("-h", "--help", "-?", "--helpshort") for a in sys.argv[1:]
  ):
    sys.argv.insert(1, f"--config={DEFAULT_CONFIG}")
  _cli.run(main)


if __name__ == "__main__":
  run()
