"""Starting JAX's multi-controller runtime (several processes, one or many hosts)."""

from __future__ import annotations

__all__ = ["initialize"]


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
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
