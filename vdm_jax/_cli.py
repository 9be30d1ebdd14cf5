"""Helpers shared by the entry points in `scripts/` (which alone define flags)."""

import os
import sys

from absl import logging

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


def initialize_distributed(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  *,
  auto: bool,
) -> None:
  """Starts JAX's multi-controller runtime when asked to.

  With any of the three launch flags, all three are required and passed to
  `jax.distributed.initialize` (the coordinator is process 0's host:port, reachable by
  every process). With none of them and `auto` (`--config.distributed=True`), JAX detects
  the cluster itself (TPU pods, SLURM, Open MPI). Collectives between CPU processes use
  gloo. Call before anything touches a JAX backend.
  """
  given = {
    "--coordinator_address": coordinator_address,
    "--num_processes": num_processes,
    "--process_id": process_id,
  }
  if all(v is None for v in given.values()) and not auto:
    return
  import jax

  if jax.distributed.is_initialized():
    return
  missing = [k for k, v in given.items() if v is None]
  if len(missing) < 3 and missing:
    raise ValueError(
      f"Multi-process launch flags go together: {', '.join(missing)} missing (each process "
      "needs the coordinator's host:port, the number of processes and its own index)."
    )
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, {num_processes}).")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
