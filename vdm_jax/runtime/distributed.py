"""Starting JAX's multi-controller runtime (several processes, one or many hosts)."""

from __future__ import annotations

__all__ = ["initialize", "prepare_data"]


def initialize(
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
  if missing:  # auto: JAX detects the cluster, or finds none
    try:
      jax.distributed.initialize()
    except (ValueError, RuntimeError) as e:
      raise ValueError(
        "config.distributed=True asks JAX to detect a cluster (a TPU pod, SLURM, Open MPI) "
        f"and it found none ({e}). On one machine leave config.distributed=False; to start "
        "processes yourself pass --coordinator_address, --num_processes and --process_id."
      ) from e
    return
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def prepare_data(data_config) -> None:
  """`data.prepare` on every process: process 0 first, then the others.

  They then find the offline datasets ready on a shared data_dir, or build their own copy
  on a host-local one (`prepare` is idempotent; for the public datasets it checks that
  this host has the files). Call on every process.
  """
  import jax
  from jax.experimental import multihost_utils

  from vdm_jax import data

  if jax.process_index() == 0:
    data.prepare(data_config)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vdm_jax: data prepared on process 0")
    if jax.process_index() != 0:
      data.prepare(data_config)
    multihost_utils.sync_global_devices("vdm_jax: data prepared")
