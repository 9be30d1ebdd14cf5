"""Train a VDM from a config file, resuming from the work directory's latest checkpoint.

  vdm-train --config=digits --workdir=runs/digits
  vdm-train --config=cifar10 --workdir=runs/c10 --config.train.batch_size=64
  python scripts/train.py --config=configs/digits.py --workdir=runs/digits   # in a clone

--config is a packaged config's name (digits, photos, cifar10, ...), a .py config file, or
a run's config.json (to train another run with its settings). Relaunching with the same --workdir resumes. SIGTERM or
Ctrl-C saves a checkpoint and exits with 128 + the signal's number (143, 130); a problem
found before or during training (bad config, workdir in use, damaged checkpoints, a failed
save, a non-finite loss) exits with status 1 and a one-paragraph message.
"""

if __name__ == "__main__":  # `python scripts/train.py`: Ctrl-C is recorded from here on,
  # not only once absl and JAX are imported (vdm-train installs them in vdm_jax._entry)
  from vdm_jax.runtime import signals

  signals.install()

from absl import flags

from vdm_jax import _cli

_CONFIG = _cli.define_config("Config: a packaged name (digits), a .py file or a config.json.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (checkpoints, logs, samples).")
_LAUNCH = _cli.define_launch_flags()
flags.mark_flags_as_required(["workdir"])


def main(argv):
  _cli.start(argv, _LAUNCH, _CONFIG.value)
  from vdm_jax import training

  training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def _training_errors():
  from vdm_jax import training

  return training.USER_ERRORS, (training.TrainingInterrupted,)


def run():
  _cli.run(main, errors=_training_errors)


if __name__ == "__main__":
  run()
