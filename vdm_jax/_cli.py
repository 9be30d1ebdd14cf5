"""Helpers shared by the entry points in `scripts/` (which alone define flags)."""

import contextlib
import os
import sys

from absl import flags, logging

from vdm_jax.runtime.distributed import initialize as initialize_distributed

__all__ = [
  "compilation_cache_dir",
  "define_launch_flags",
  "enable_compilation_cache",
  "initialize_distributed",
  "quiet_logging",
  "start",
  "user_errors_exit",
]

CACHE_ENV = "VDM_JAX_COMPILATION_CACHE_DIR"
_CACHE_OFF = ("", "0", "none", "off", "false", "no")


def quiet_logging() -> None:
  """Show absl/orbax/jax INFO logs only when asked for (`--verbosity=0` or `-v 0`).

  The scripts print what a user needs; the libraries' INFO lines (checkpoint I/O,
  backend probing) would bury it. Call first thing in `main`.
  """
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)


def compilation_cache_dir(path: str | None = None) -> str | None:
  """Where `enable_compilation_cache(path)` puts JAX's compiled programs; None: nowhere.

  The first of: `path`; `$VDM_JAX_COMPILATION_CACHE_DIR`; `$JAX_COMPILATION_CACHE_DIR`
  (JAX's own variable); `$XDG_CACHE_HOME/vdm_jax/jax`, else `~/.cache/vdm_jax/jax`. A
  value of "none", "off", "0", "false", "no" or "" turns the cache off.
  """
  for value in (path, os.environ.get(CACHE_ENV), os.environ.get("JAX_COMPILATION_CACHE_DIR")):
    if value is not None:
      return None if value.strip().lower() in _CACHE_OFF else os.path.expanduser(value)
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "vdm_jax", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache, so a relaunch skips recompiling.

  A second launch of a command with the same model (a resume, a relaunch in a new work
  directory) then loads its compiled steps from disk instead of compiling them again
  (2 CPU cores, digits: the first training step after 11.5 s cold, 4.0 s warm).
  The directory is `compilation_cache_dir(path)`; with the cache off
  (`VDM_JAX_COMPILATION_CACHE_DIR=none`) JAX's cache is switched off as well. Programs
  that compile in under 1 s are not written (JAX 0.10's default, pinned here; the digits
  steps take 1.4-8.5 s, the small helper programs under 0.2 s), unless
  `$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` says otherwise. If the directory cannot
  be created, a warning is printed and the run goes on without the cache. Call first
  thing in `main`, before anything is compiled.

  Returns:
    The cache directory, or None when the cache is off.
  """
  import jax

  directory = compilation_cache_dir(path)
  if directory is not None:
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      print(f"warning: no compilation cache ({e}); set {CACHE_ENV} to move it.", file=sys.stderr)
      directory = None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_enable_compilation_cache", directory is not None)
  if directory is not None and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return directory


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
  turn on the persistent compilation cache (`enable_compilation_cache`), and (with `launch_flags` from `define_launch_flags`) start the multi-process runtime."""
  from absl import app

  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  quiet_logging()
  enable_compilation_cache()
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
