"""Train a VDM from a config file, resuming from the work directory's latest checkpoint.

  python scripts/train.py --config=configs/digits.py --workdir=runs/digits
  python scripts/train.py --config=configs/cifar10.py --workdir=runs/c10 --config.train.batch_size=64

Also installed as `vdm-train`. Relaunching with the same --workdir resumes. SIGTERM or
Ctrl-C saves a checkpoint and exits with 128 + the signal's number (143, 130); a problem
found before or during training (bad config, workdir in use, damaged checkpoints, a failed
save, a non-finite loss) exits with status 1 and a one-paragraph message.
"""

from absl import app, flags
from ml_collections import config_flags

from vdm_jax import _cli

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (checkpoints, logs, samples).")
_LAUNCH = _cli.define_launch_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  _cli.start(argv, _LAUNCH, _CONFIG.value)
  from vdm_jax import training

  with _cli.user_errors_exit(training.USER_ERRORS, (training.TrainingInterrupted,)):
    training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
