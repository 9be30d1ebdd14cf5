"""The device mesh, shardings, and moving batches and results between hosts and devices.

One 1-D ("data",) mesh over every device of every process (`jax.make_mesh`; no pmap,
which is legacy): batches are split along it, the train state is replicated (or, with "fsdp", split) over it. Training,
evaluation and sampling all build their shardings here.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vdm_jax._arith import round_up

__all__ = [
  "batch_sharding",
  "check_batch_size",
  "gather",
  "host_array",
  "make_mesh",
  "prefetch_to_mesh",
  "replicated",
  "state_shardings",
  "to_global",
]


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over every device. Auto axis type: jax 0.10's default (Explicit)
  would put shardings into the types and reject Flax's dropout `select`."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  """Every array whole on every device of `mesh`."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh's "data" axis."""
  return NamedSharding(mesh, P("data"))


def check_batch_size(
  batch_size: int, what: str = "config.train.batch_size", *, micro_batches: int = 1
) -> None:
  """Each device gets an equal share of the batch (of each of `micro_batches` parts of it,
  with gradient accumulation)."""
  n = jax.device_count()
  if micro_batches > 1 and batch_size % (micro_batches * n):
    raise ValueError(
      f"{what} ({batch_size}) / config.train.grad_accum_steps ({micro_batches}) must be "
      f"divisible by the number of devices ({n}); try {what}="
      f"{round_up(batch_size, micro_batches * n)}."
    )
  if batch_size % n:
    raise ValueError(
      f"{what} ({batch_size}) must be divisible by the number of devices ({n}); "
      f"try {round_up(batch_size, n)}."
    )


def state_shardings(state_shapes, mesh, kind: str = "replicated", *, min_size: int = 2**14):
  """Shardings of the train state over the mesh's "data" axis.

  "replicated": every array on every device (data parallelism). "fsdp" (fully sharded
  data parallelism): each array of at least `min_size` elements is split along its
  largest axis that the device count divides (params, both Adam moments and the EMA
  alike); smaller ones (whose gathers would cost more than the memory they save), and
  those with no such axis, stay replicated. XLA then gathers
  the params where the step needs them and reduce-scatters the gradients, so the
  per-device memory of the state falls about N-fold for N devices.

  Args:
    state_shapes: a TrainState (or any pytree) of arrays or ShapeDtypeStructs.
    mesh: a mesh with a "data" axis.
    kind: "replicated" or "fsdp".
    min_size: the smallest array "fsdp" splits (`config.train.fsdp_min_size`).

  Returns:
    a pytree of `NamedSharding`s with the structure of `state_shapes`.
  """
  if kind == "replicated":
    return jax.tree.map(lambda _: replicated(mesh), state_shapes)
  if kind != "fsdp":
    raise ValueError(f"Unknown sharding {kind!r}; choose 'replicated' or 'fsdp'.")
  n = mesh.shape["data"]

  def leaf(x):
    if x.size < min_size:
      return replicated(mesh)
    for axis in sorted(range(x.ndim), key=lambda a: -x.shape[a]):
      if x.shape[axis] % n == 0:
        spec = [None] * x.ndim
        spec[axis] = "data"
        return NamedSharding(mesh, P(*spec))
    return replicated(mesh)

  return jax.tree.map(leaf, state_shapes)


def to_global(batch: dict, mesh) -> dict:
  """Process-local numpy batch -> global jax.Arrays split over the mesh's "data" axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def prefetch_to_mesh(batches: Iterable[dict], mesh, size: int = 2) -> Iterator[dict]:
  """Yields `to_global(batch, mesh)` for each batch of `batches`, in order, keeping up to
  `size` of the next ones already put on the devices (`size` = 0: none ahead).

  The transfers of the next batches are dispatched before the current one is handed out,
  so they overlap with the step that runs on it. The same batches come out in the same
  order; the iterator is read up to `size` batches ahead of the consumer (a resumed run
  restarts its data iterator at its step, so reading ahead changes nothing it sees).
  """
  iterator = iter(batches)
  queue = collections.deque()

  def fill(n: int) -> None:
    for batch in itertools.islice(iterator, n):
      queue.append(to_global(batch, mesh))

  while True:
    fill(size + 1 - len(queue))
    if not queue:
      return
    yield queue.popleft()


def gather(tree):
  """A pytree of global jax.Arrays -> the whole arrays as numpy, on every process (every
  process must call it)."""
  return jax.device_get(multihost_utils.process_allgather(tree, tiled=True))


def host_array(x) -> np.ndarray:
  """The whole of a (possibly sharded, possibly multi-process) array, as numpy; collective
  only when the array is split over processes."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
