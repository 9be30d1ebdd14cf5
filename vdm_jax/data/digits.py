"""scikit-learn's bundled 8x8 digits as a tfds dataset written to array_record, offline.

The 1,797 images of `sklearn.datasets.load_digits` (UCI optical recognition of
handwritten digits) ship inside scikit-learn, so this dataset builds with no network and
no TensorFlow in about a second. Pixels are integer grey levels 0..16, so the data have
V = 17 values per dimension: images are stored exactly, as uint8 `(8, 8, 1)` tensors
(`tfds.features.Tensor`; `tfds.features.Image` would need TensorFlow to encode).

Split: a fixed permutation of the 1,797 sklearn indices from `np.random.default_rng(0)`;
its first 1,497 indices are "train" and its last 300 "test". Record i of a split is the
image `load_digits().images[split_indices()[split][i]]`: tfds shuffling is disabled and the
tfds key of a record is its position in the split, so the stored order is that of the
permutation and the split is reproducible from `split_indices()` alone.

  >>> digits.prepare("/tmp/tfds")                       # writes sklearn_digits/1.0.0/
  >>> source = digits.data_source("/tmp/tfds", "train")  # random access, len 1497
  >>> source[0]["image"].shape
  (8, 8, 1)
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from vdm_jax.data import _offline

__all__ = [
  "NUM_CLASSES",
  "NUM_EXAMPLES",
  "SHAPE",
  "SPLIT_SEED",
  "SklearnDigits",
  "VOCAB_SIZE",
  "data_source",
  "prepare",
  "split_indices",
]

VOCAB_SIZE = 17
"""Grey levels of scikit-learn's digits (0..16)."""
NUM_CLASSES = 10
"""The digit 0-9, each record's "label"."""
SHAPE = (8, 8, 1)
"""The shape of one digit."""
SPLIT_SEED = 0
"""Seed of the permutation that splits the 1,797 digits."""
NUM_EXAMPLES = {"train": 1_497, "test": 300}
"""Examples per split."""
_TOTAL = 1_797


def split_indices() -> dict[str, np.ndarray]:
  """The sklearn indices of each split, in the order the records are stored.

  Returns:
    {"train": int64 [1497], "test": int64 [300]}, disjoint, together 0..1796.
  """
  permutation = np.random.default_rng(SPLIT_SEED).permutation(_TOTAL)
  return {
    "train": permutation[: NUM_EXAMPLES["train"]],
    "test": permutation[NUM_EXAMPLES["train"] :],
  }


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """tfds builder of scikit-learn's 8x8 digits (registered as "sklearn_digits")."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "8x8x1 uint8 images in 0..16; fixed 1,497/300 split (seed 0)."}

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly, not `dataset_info_from_configs`, which looks for tfds metadata
    # files (README, citations, tags) next to the builder's module.
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "scikit-learn's copy of the UCI optical recognition of handwritten digits test "
        "set: 1,797 8x8 images with 17 grey levels (0..16). Split: a fixed permutation "
        "(numpy default_rng(0)) of the sklearn indices, first 1,497 train, last 300 test."
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=SHAPE, dtype=np.uint8),
          "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ship with scikit-learn.
    return {split: self._generate_examples(indices) for split, indices in split_indices().items()}

  def _generate_examples(self, indices):
    from sklearn.datasets import load_digits  # Deferred: only building needs sklearn.

    digits = load_digits()
    images = digits.images  # float64 [1797, 8, 8] holding integers 0..16
    if not (
      np.array_equal(images, np.round(images)) and images.min() >= 0 and images.max() < VOCAB_SIZE
    ):
      raise ValueError(
        f"sklearn's digits are expected to be integers in 0..{VOCAB_SIZE - 1}, got values in "
        f"[{images.min()}, {images.max()}]."
      )
    # With shuffling disabled tfds stores records sorted by key: key = position in split.
    for position, index in enumerate(indices):
      image = images[index].astype(np.uint8)[..., None]
      yield position, {"image": image, "label": int(digits.target[index])}


def _builder(data_dir: str) -> SklearnDigits:
  return SklearnDigits(data_dir=os.fspath(data_dir), file_format="array_record")


def prepare(data_dir: str) -> None:
  """Builds the dataset under `data_dir/sklearn_digits/1.0.0/` unless already built.

  Idempotent: a prepared dataset is left untouched (no rebuild, no rewrite).

  Args:
    data_dir: tfds data directory.

  Raises:
    DataDirNotWritableError (a ValueError and PermissionError) if it must be built and
    data_dir cannot be written; nothing is written then.
  """
  data_dir = os.path.expanduser(os.fspath(data_dir))
  _offline.prepare(_builder(data_dir), data_dir, name="digits", build_time="about a second")


def data_source(data_dir: str, split: str):
  """Random-access source of one split: `len` and `[i] -> {"image", "label"}`.

  Args:
    data_dir: tfds data directory where `prepare` wrote the dataset.
    split: "train" or "test".

  Returns:
    a tfds `ArrayRecordDataSource`; records are {"image": uint8 (8, 8, 1), "label": int}.
  """
  data_dir = os.path.expanduser(os.fspath(data_dir))
  return _offline.prepared_source(
    _builder(data_dir),
    data_dir,
    split,
    name="digits",
    module="digits",
    splits=NUM_EXAMPLES,
    build_time="about a second",
  )
