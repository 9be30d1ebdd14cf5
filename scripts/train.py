"""Train a VDM from a config file, resuming from the work directory's latest checkpoint.

  python scripts/train.py --config=configs/digits.py --workdir=runs/digits
  python scripts/train.py --config=configs/cifar10.py --workdir=runs/c10 --config.train.batch_size=64

Also installed as `vdm-train`. Relaunching with the same --workdir resumes.
"""

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (checkpoints, logs, samples).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vdm_jax._cli import quiet_logging

  quiet_logging()
  from vdm_jax import train

  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
