"""Helpers shared by the entry points in `scripts/` (which alone define flags)."""

import contextlib
import sys

from absl import flags, logging

from vdm_jax.runtime.distributed import initialize as initialize_distributed

__all__ = [
  "define_launch_flags",
  "initialize_distributed",
  "quiet_logging",
  "start",
  "user_errors_exit",
]


def quiet_logging() -> None:
  """Show absl/orbax/jax INFO logs only when asked for (`--verbosity=0` or `-v 0`).

  The scripts print what a user needs; the libraries' INFO lines (checkpoint I/O,
  backend probing) would bury it. Call first thing in `main`.
  """
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)


def define_launch_flags():
  """Defines --coordinator_address, --num_processes and --process_id (several processes,
  one or many hosts) in the calling script; returns their holders."""
  return (
    flags.DEFINE_string(
      "coordinator_address", None, "Several processes: host:port of process 0 (all processes)."
    ),
    flags.DEFINE_integer("num_processes", None, "Several processes: how many."),
    flags.DEFINE_integer("process_id", None, "Several processes: this one's index."),
  )


def start(argv, launch_flags=None, config=None) -> None:
  """What every entry point does first: refuse stray arguments, quiet the libraries' logs,
  and (with `launch_flags` from `define_launch_flags`) start the multi-process runtime."""
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  quiet_logging()
  if launch_flags is not None:
    coordinator, num_processes, process_id = (f.value for f in launch_flags)
    auto = bool(config is not None and config.get("distributed", False))
    initialize_distributed(coordinator, num_processes, process_id, auto=auto)


@contextlib.contextmanager
def user_errors_exit(errors: tuple | None = None, interrupted: tuple = ()):
  """Prints an error of `errors` (default: ValueError, FileNotFoundError and
  `CheckpointError`, whose messages say what to do) as one paragraph, prefixed
  with the process index when there are several, and exits 1; an exception of
  `interrupted` (`training.TrainingInterrupted`, which has `signum`) exits 128 + its signal
  number (the shell's code for "ended by this signal")."""
  if errors is None:
    from vdm_jax.runtime.checkpoints import CheckpointError

    errors = (ValueError, FileNotFoundError, CheckpointError)
  try:
    yield
  except interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)
  except errors as e:
    import jax

    where = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
    sys.exit(f"{where}error: {e}")
