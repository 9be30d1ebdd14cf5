"""The dataset registry: `data.name` -> how to prepare and read the dataset (`Dataset`).

The built-in datasets register themselves in `vdm_jax.data.catalogue`; your own is one
`register(Dataset(name=..., ...))` call (docs/extending.md), or no code at all for a
folder of images (`vdm-import-images`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from vdm_jax._registry import Registry

__all__ = ["DATASETS", "Dataset", "check_split", "register"]


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
    num_classes: C > 0 when its records carry an integer "label" in {0, ..., C - 1}
      (batches then have "label" `[B]`); 0 for unlabelled data.
  """

  name: str
  splits: tuple[str, ...]
  source: Callable[[str | None, str], object]
  prepare: Callable[[str | None], None]
  shape: tuple[int, ...]
  vocab_size: int = 256
  num_examples: Mapping[str, int] | None = None
  uses_data_dir: bool = True
  num_classes: int = 0

  def check_split(self, split) -> str:
    """Returns `split` if it is one of `splits`, else raises ValueError naming both."""
    return check_split(self.name, self.splits, split)


def check_split(name: str, splits, split) -> str:
  """Returns `split` if it is one of `splits`, else raises ValueError naming both.

  The one check of a split name, done before the name reaches a dict or a tfds lookup
  (whose KeyError would name only the split).

  Args:
    name: the dataset's name, for the message.
    splits: its split names.
    split: the requested split.
  """
  splits = tuple(splits)
  if not isinstance(split, str) or split not in splits:
    raise ValueError(
      f"Unknown split {split!r} of dataset {name!r}; its splits are {splits}. Choose one of "
      "them (for evaluation: --split or config.eval.split)."
    )
  return split


DATASETS: Registry[Dataset] = Registry("dataset data.name")
"""Every dataset `data.name` may select, by name (`register` adds one)."""


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
