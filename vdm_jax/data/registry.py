"""The dataset registry: `data.name` -> how to prepare and read the dataset (`Dataset`).

The built-in datasets register themselves in `vdm_jax.data.pipeline`; your own is one
`register(Dataset(...))` call (README: "Add your own dataset"), or no code at all for a
folder of images (`vdm-import-images`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from vdm_jax._registry import Registry

__all__ = ["DATASETS", "Dataset", "register"]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """How the pipeline prepares and reads one dataset: an entry of `DATASETS`.

  Attributes:
    name: the `data.name` that selects it.
    splits: its split names, e.g. ("train", "test").
    source: `(data_dir, split) -> random-access source` (`len`, `[i]`) of records that
      are {"image": integer array} (or integer arrays); data_dir is None when
      `uses_data_dir` is False.
    prepare: `data_dir -> None`, idempotent: builds offline data or checks that they exist.
    shape: per-example shape.
    vocab_size: V, integer levels per dimension.
    num_examples: split -> size, or None when only the prepared files know it.
    uses_data_dir: whether it lives under `data.data_dir` (False: generated in memory).
  """

  name: str
  splits: tuple[str, ...]
  source: Callable[[str | None, str], object]
  prepare: Callable[[str | None], None]
  shape: tuple[int, ...]
  vocab_size: int = 256
  num_examples: Mapping[str, int] | None = None
  uses_data_dir: bool = True


DATASETS: Registry[Dataset] = Registry("dataset data.name")


def register(dataset: Dataset, *, replace: bool = False) -> Dataset:
  """Adds `dataset` to `DATASETS`, so that `data.name=dataset.name` selects it.

  Folders of images need no code: `vdm-import-images` writes them into a data_dir, where
  `lookup` finds them by name.

  Args:
    dataset: the entry.
    replace: allow replacing an entry of the same name.

  Returns:
    `dataset`.
  """
  if not isinstance(dataset, Dataset):
    raise ValueError(f"register expects a data.Dataset, got {type(dataset).__name__}.")
  return DATASETS.register(dataset.name, dataset, replace=replace)
