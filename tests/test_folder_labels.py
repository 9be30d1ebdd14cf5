"""Labelled image folders: the class of a file is its top-level sub-folder; records, the
evaluation batches and the training batches carry "label". Generated PNGs in tmp_path."""

import json

import ml_collections
import numpy as np
import PIL.Image
import pytest

from vdm_jax import data
from vdm_jax.data import folder

CLASSES = ("cat", "dog", "owl")


def _png(path, value):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(np.full((6, 9), value, np.uint8)).save(path)


@pytest.fixture
def labelled(tmp_path):
  """Four grey PNGs per class (one a level deeper); pixel value 50 * label + i, so every
  image is distinct and its value tells its class."""
  images = tmp_path / "images"
  for label, name in enumerate(CLASSES):
    for i in range(4):
      rel = f"{name}/old/{i}.png" if i == 3 else f"{name}/{i}.png"
      _png(images / rel, 50 * label + i)
  return images


def _config(name, data_dir):
  return ml_collections.ConfigDict({"name": name, "data_dir": str(data_dir), "num_workers": 0})


def test_class_is_the_sub_folder_and_batches_carry_it(labelled, tmp_path):
  data_dir = tmp_path / "tfds"
  summary = folder.import_images(
    labelled, name="pets", data_dir=data_dir, resolution=4, test_fraction=0.25, labels=True
  )
  assert summary["classes"] == list(CLASSES)
  config = _config("pets", data_dir)
  info = data.dataset_info(config)
  assert info.num_classes == 3 and info.num_examples == {"train": 9, "test": 3}
  metadata = json.loads((data_dir / "pets" / "1.0.0" / "metadata.json").read_text())
  assert metadata["classes"] == list(CLASSES)
  seen = set()
  for split in ("train", "test"):
    for batch in data.eval_batches(config, split, global_batch_size=8):
      real = batch["mask"] > 0
      value = batch["image"][real][:, 0, 0, 0]
      np.testing.assert_array_equal(batch["label"][real], value // 50)
      seen |= set(value.tolist())
  assert seen == {50 * c + i for c in range(3) for i in range(4)}  # every file, once
  train = next(data.make_train_iterator(config, global_batch_size=6, seed=0))
  assert train["label"].shape == (6,) and train["label"].dtype == np.int32
  np.testing.assert_array_equal(train["label"], train["image"][:, 0, 0, 0] // 50)


def test_without_labels_sub_folders_only_hold_files(labelled, tmp_path):
  summary = folder.import_images(labelled, name="plain", data_dir=tmp_path / "tfds", resolution=4)
  assert summary["classes"] == []
  config = _config("plain", tmp_path / "tfds")
  assert data.dataset_info(config).num_classes == 0
  batch = next(iter(data.eval_batches(config, "test", global_batch_size=4)))
  assert "label" not in batch


def test_labels_need_every_file_in_a_class_folder_and_two_classes(labelled, tmp_path):
  _png(labelled / "stray.png", 250)
  _png(labelled / "loose.png", 251)
  with pytest.raises(folder.ImageFolderError, match=r"2 file\(s\) lie directly") as error:
    folder.import_images(labelled, name="pets", data_dir=tmp_path / "tfds", labels=True)
  assert "loose.png" in str(error.value) and "stray.png" in str(error.value)
  assert not (tmp_path / "tfds" / "pets").exists()
  one = tmp_path / "one"
  for i in range(3):
    _png(one / "cat" / f"{i}.png", i)
  with pytest.raises(folder.ImageFolderError, match="at least 2 classes.*found 1: cat"):
    folder.import_images(one, name="one", data_dir=tmp_path / "tfds", resolution=4, labels=True)
  assert folder.class_names(["b/x.png", "a/y/z.png", "b/w.png"]) == (["a", "b"], [])
