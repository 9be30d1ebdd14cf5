"""The dataset catalogue (vdm_jax.data.catalogue) and `data.first_examples`: every
built-in dataset is registered once with what its module declares, the old import paths
still name the same objects, and the first examples of a split are its stored first rows."""

import types

import numpy as np
import pytest

from vdm_jax import data
from vdm_jax.data import catalogue, digits, photos, pipeline, registry, toy2d


def _config(name, data_dir=None):
  return types.SimpleNamespace(name=name, data_dir=data_dir, num_workers=0)


def test_the_builtin_datasets_and_what_they_declare():
  assert list(data.DATASETS)[:6] == ["digits", "toy2d", "cifar10", "mnist", "imagenet32", "photos"]
  for name, module in [("digits", digits), ("toy2d", toy2d), ("photos", photos)]:
    entry = data.DATASETS[name]
    assert (entry.shape, entry.vocab_size) == (module.SHAPE, module.VOCAB_SIZE)
    assert dict(entry.num_examples) == module.NUM_EXAMPLES
    assert entry.splits == ("train", "test")
  assert data.DATASETS["digits"].num_classes == 10 and data.DATASETS["photos"].num_classes == 0
  assert data.DATASETS["toy2d"].uses_data_dir is False
  for name, shape in [
    ("cifar10", (32, 32, 3)),
    ("mnist", (28, 28, 1)),
    ("imagenet32", (32, 32, 3)),
  ]:
    entry = data.DATASETS[name]
    assert (entry.shape, entry.vocab_size, entry.num_examples) == (shape, 256, None)
    assert entry.splits == ("train", "test")
  # The in-memory dataset's source really holds records of the declared shape and range.
  test = data.DATASETS["toy2d"].source(None, "test")
  assert test.shape == (toy2d.NUM_EXAMPLES["test"], *toy2d.SHAPE)
  assert 0 <= test.min() and test.max() < toy2d.VOCAB_SIZE


def test_old_import_paths_name_the_same_objects():
  assert pipeline.lookup is catalogue.lookup is data.lookup
  assert pipeline.splits is catalogue.splits is data.splits
  assert pipeline.DATASETS is registry.DATASETS is data.DATASETS
  assert pipeline.register is registry.register and pipeline.Dataset is registry.Dataset
  assert data.splits("toy2d") == ("train", "test")


def test_public_datasets_not_prepared_say_how_to_prepare_them(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
    data.prepare(_config("cifar10", str(tmp_path)))


def test_first_examples_are_the_splits_first_rows():
  rows = data.first_examples(_config("toy2d"), "test", 7)
  assert set(rows) == {"image"}
  np.testing.assert_array_equal(rows["image"], toy2d.load("test")[:7])
  assert rows["image"].dtype == np.int32
  # The same rows as the first batch of eval_batches (one process), padding dropped.
  batch = next(data.eval_batches(_config("toy2d"), "test", global_batch_size=8))
  np.testing.assert_array_equal(batch["image"][:7], rows["image"])
  # Asking for more than the split holds gives the split.
  assert data.first_examples(_config("toy2d"), "test", 10**6)["image"].shape == (5000, 2)


def test_first_examples_of_a_labelled_split():
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 4, (9, 3, 3, 1)), rng.integers(0, 3, (9,))
  records = [{"image": images[i], "label": labels[i]} for i in range(9)]
  data.register(
    data.Dataset(
      name="labelled_in_memory",
      splits=("train", "test"),
      source=lambda data_dir, split: records,
      prepare=lambda data_dir: None,
      shape=(3, 3, 1),
      vocab_size=4,
      num_examples={"train": 9, "test": 9},
      uses_data_dir=False,
      num_classes=3,
    )
  )
  try:
    rows = data.first_examples(_config("labelled_in_memory"), "train", 5)
  finally:
    data.DATASETS.unregister("labelled_in_memory")
  np.testing.assert_array_equal(rows["image"], images[:5])
  np.testing.assert_array_equal(rows["label"], labels[:5])
  assert rows["label"].dtype == np.int32 and rows["image"].shape == (5, 3, 3, 1)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "5"])
def test_first_examples_refuses_a_bad_count(bad):
  with pytest.raises(ValueError, match="num_examples must be an int >= 1"):
    data.first_examples(_config("toy2d"), "test", bad)


def test_first_examples_refuses_an_unknown_split():
  with pytest.raises(ValueError, match=r"Unknown split 'valid' of dataset 'toy2d'"):
    data.first_examples(_config("toy2d"), "valid", 3)
