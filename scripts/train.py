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

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Path to a config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory (checkpoints, logs, samples).")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "Several processes: host:port of process 0 (all processes)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vdm_jax._cli import enable_compilation_cache, initialize_distributed, quiet_logging

  enable_compilation_cache()
  quiet_logging()
  initialize_distributed(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_CONFIG.value.distributed
  )
  import sys

  from vdm_jax import train

  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.TrainingInterrupted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)  # the shell's code for "ended by this signal"
  except train.USER_ERRORS as e:
    import jax

    where = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
    sys.exit(f"{where}error: {e}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
