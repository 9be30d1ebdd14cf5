"""The data layer: builders, the grain pipeline, checkpointable iterators, toy2d's likelihood.

Nothing here downloads: digits and toy2d are offline, the public datasets are read from
`tfds.testing.mock_data` or from array_record files written here with the real cifar10
feature spec. Every data_dir is a tmp_path.
"""

import io
import os
import subprocess
import sys
import textwrap
import time

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import PIL.Image
import pytest
import scipy.special
import scipy.stats
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from vdm_jax import data
from vdm_jax.data import digits, toy2d


def _config(name, data_dir="", num_workers=0):
  return ml_collections.ConfigDict(
    {"name": name, "data_dir": str(data_dir), "num_workers": num_workers}
  )


def _rows(images) -> list[bytes]:
  """A split as a sorted multiset of examples (order-free comparison)."""
  images = np.asarray(images)
  return sorted(row.tobytes() for row in images.astype(np.int32))


def _same(batches, others) -> bool:
  return len(batches) == len(others) and all(map(np.array_equal, batches, others))


def _take(iterator, num_batches):
  return [next(iterator)["image"] for _ in range(num_batches)]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  data.prepare(_config("digits", data_dir))
  return data_dir


@pytest.fixture
def num_processes(monkeypatch):
  """Pretends this is process `index` of `count`: `set(index, count)`."""

  def set_processes(index, count):
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)

  return set_processes


def _split_images(digits_dir, split):
  return np.concatenate(
    [
      b["image"][b["mask"] > 0]
      for b in data.eval_batches(_config("digits", digits_dir), split, global_batch_size=500)
    ]
  )


# ---------------------------------------------------------------------------
# Configuration errors.
# ---------------------------------------------------------------------------


def test_unknown_dataset_lists_the_datasets():
  with pytest.raises(
    ValueError, match=r"cifar100.*'digits', 'toy2d', 'cifar10', 'mnist', 'imagenet32'"
  ):
    data.dataset_info(_config("cifar100"))
  with pytest.raises(ValueError, match="cifar100"):
    data.make_train_iterator(_config("cifar100"), global_batch_size=8, seed=0)


def test_unknown_dataset_names_the_data_dir_searched_and_the_way_out(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(ValueError) as error:
    data.dataset_info(_config("dogs", "~/tfds"))
  message = str(error.value)
  for fragment in [
    "Unknown dataset data.name='dogs'",
    f"the data_dir {str(tmp_path / 'tfds')!r} searched for imported datasets does not exist",
    "point --config.data.data_dir at that directory",
    f"vdm-import-images --images=DIR --name=dogs --data_dir={tmp_path / 'tfds'}",
  ]:
    assert fragment in message, (fragment, message)
  (tmp_path / "tfds" / "dogs").mkdir(parents=True)  # not an import: said so
  with pytest.raises(ValueError, match=r"tfds' holds no imported dataset \('.*dogs' exists but"):
    data.lookup(_config("dogs", "~/tfds"))
  with pytest.raises(ValueError, match=r"no data_dir is set.*--name=NAME --data_dir=DATA_DIR"):
    data.lookup(_config("Dogs", ""))
  assert os.listdir(tmp_path / "tfds") == ["dogs"]


def test_unknown_split_lists_the_splits(digits_dir):
  with pytest.raises(ValueError, match=r"'valid'.*\('train', 'test'\)"):
    data.eval_batches(_config("toy2d"), "valid", global_batch_size=8)
  with pytest.raises(ValueError, match=r"'validation'.*\('train', 'test'\)"):
    data.eval_batches(_config("imagenet32", "/nonexistent"), "validation", global_batch_size=8)
  # Every place a split name is taken: the same message, never a bare KeyError.
  config = _config("digits", digits_dir)
  match = r"Unknown split 'valid' of dataset 'digits'; its splits are \('train', 'test'\)\."
  for call in [
    lambda: data.eval_batches(config, "valid", global_batch_size=8),
    lambda: data.dataset_info(config).num_examples["valid"],  # how evaluation sizes a split
    lambda: digits.data_source(str(digits_dir), "valid"),
    lambda: data.DATASETS["cifar10"].source(str(digits_dir), "valid"),
  ]:
    with pytest.raises(ValueError, match=match.replace("digits", "(digits|cifar10)")):
      call()
  info = data.dataset_info(config)
  assert info.num_examples["test"] == 300 and info.num_examples == {"train": 1497, "test": 300}


def test_batch_size_must_divide_over_processes(num_processes):
  num_processes(0, 3)
  with pytest.raises(ValueError, match=r"global_batch_size \(16\).*processes \(3\)"):
    data.make_train_iterator(_config("toy2d"), global_batch_size=16, seed=0)
  with pytest.raises(ValueError, match=r"global_batch_size \(16\).*processes \(3\)"):
    data.eval_batches(_config("toy2d"), "test", global_batch_size=16)


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_bad_seed(seed):
  with pytest.raises(ValueError, match="seed"):
    data.make_train_iterator(_config("toy2d"), global_batch_size=8, seed=seed)


def test_bad_num_workers():
  with pytest.raises(ValueError, match="num_workers"):
    data.make_train_iterator(_config("toy2d", num_workers=-1), global_batch_size=8, seed=0)


def test_dataset_info_of_offline_datasets():
  info = data.dataset_info(_config("digits", "/unused"))
  assert info == data.DatasetInfo(
    "digits", (8, 8, 1), 17, {"train": 1497, "test": 300}, num_classes=10
  )
  assert info.num_dims == 64 and info.splits == ("train", "test")
  info = data.dataset_info(_config("toy2d"))
  assert info == data.DatasetInfo("toy2d", (2,), 256, {"train": 20_000, "test": 5_000})
  assert info.num_classes == 0


# ---------------------------------------------------------------------------
# Digits: the tfds builder.
# ---------------------------------------------------------------------------


def test_digits_split_is_a_fixed_partition():
  indices = digits.split_indices()
  assert len(indices["train"]) == 1497 and len(indices["test"]) == 300
  assert np.array_equal(
    np.sort(np.concatenate([indices["train"], indices["test"]])), np.arange(1797)
  )
  assert _same(list(indices.values()), list(digits.split_indices().values()))


def test_digits_records_are_sklearns_images_in_split_order(digits_dir):
  sk = load_digits()
  for split, indices in digits.split_indices().items():
    source = digits.data_source(str(digits_dir), split)
    assert len(source) == len(indices)
    records = [source[i] for i in range(len(source))]
    images = np.stack([r["image"] for r in records])
    assert images.dtype == np.uint8 and images.shape == (len(indices), 8, 8, 1)
    np.testing.assert_array_equal(images[..., 0], sk.images[indices])
    np.testing.assert_array_equal([r["label"] for r in records], sk.target[indices])
  files = os.listdir(digits_dir / "sklearn_digits" / "1.0.0")
  assert any(".array_record" in f for f in files), files


def test_digits_prepare_is_idempotent(digits_dir):
  version_dir = digits_dir / "sklearn_digits" / "1.0.0"
  before = {f: os.stat(version_dir / f).st_mtime_ns for f in os.listdir(version_dir)}
  start = time.perf_counter()
  data.prepare(_config("digits", digits_dir))
  assert time.perf_counter() - start < 1.0
  assert {f: os.stat(version_dir / f).st_mtime_ns for f in os.listdir(version_dir)} == before


def test_digits_not_prepared(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"digits.*not prepared.*prepare\(data_config\)"):
    data.make_train_iterator(_config("digits", tmp_path), global_batch_size=8, seed=0)


def test_reading_digits_and_toy2d_does_not_import_tensorflow(tmp_path):
  code = textwrap.dedent(f"""
    import sys
    import ml_collections
    from vdm_jax import data
    config = ml_collections.ConfigDict(dict(name="digits", data_dir={str(tmp_path)!r}, num_workers=0))
    data.prepare(config)
    batch = next(data.make_train_iterator(config, global_batch_size=8, seed=0))
    assert batch["image"].shape == (8, 8, 8, 1), batch["image"].shape
    assert sum(b["mask"].sum() for b in data.eval_batches(config, "test", global_batch_size=64)) == 300
    config.name = "toy2d"
    assert next(data.make_train_iterator(config, global_batch_size=8, seed=0))["image"].shape == (8, 2)
    assert "tensorflow" not in sys.modules, "tensorflow was imported"
    print("no tensorflow")
  """)
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "no tensorflow" in result.stdout


# ---------------------------------------------------------------------------
# The train iterator: epochs, seeds, sharding, checkpointed state.
# ---------------------------------------------------------------------------


def test_train_batches_cover_each_epoch_and_reshuffle(digits_dir):
  train = _split_images(digits_dir, "train")
  iterator = data.make_train_iterator(_config("digits", digits_dir), global_batch_size=499, seed=0)
  batches = _take(iterator, 6)  # 1497 = 3 * 499: two epochs
  assert all(b.shape == (499, 8, 8, 1) and b.dtype == np.int32 for b in batches)
  epoch_1, epoch_2 = np.concatenate(batches[:3]), np.concatenate(batches[3:])
  assert _rows(epoch_1) == _rows(train) == _rows(epoch_2)
  assert not np.array_equal(epoch_1, epoch_2)  # reshuffled
  assert not np.array_equal(epoch_1, train)  # shuffled at all


def test_same_seed_same_order_different_seed_different_order(digits_dir):
  config = _config("digits", digits_dir)
  first = _take(data.make_train_iterator(config, global_batch_size=32, seed=7), 3)
  again = _take(data.make_train_iterator(config, global_batch_size=32, seed=7), 3)
  other = _take(data.make_train_iterator(config, global_batch_size=32, seed=8), 3)
  assert _same(first, again)
  assert not np.array_equal(np.concatenate(first), np.concatenate(other))


@pytest.mark.parametrize("count", [2, 3])
def test_processes_read_their_rows_of_one_global_order(digits_dir, num_processes, count):
  """P processes' rows of each global batch, concatenated, are the batch one process reads;
  a start step resumes the same order."""
  config = _config("digits", digits_dir)
  num_processes(0, 1)
  single = _take(data.make_train_iterator(config, global_batch_size=96, seed=5), 40)
  per_process = []
  for index in range(count):
    num_processes(index, count)
    it = data.make_train_iterator(config, global_batch_size=96, seed=5, start_step=20)
    per_process.append(_take(it, 20))  # global batches 20..39, 96 // count rows each
  for b in range(20):
    np.testing.assert_array_equal(np.concatenate([p[b] for p in per_process]), single[20 + b])


@pytest.mark.parametrize("name", ["digits", "toy2d"])
def test_restored_state_continues_exactly(name, digits_dir):
  config = _config(name, digits_dir)
  iterator = data.make_train_iterator(config, global_batch_size=64, seed=3)
  _take(iterator, 30)  # past the end of the first digits epoch (1497 / 64 < 24)
  state = iterator.get_state()
  expected = _take(iterator, 5)
  fresh = data.make_train_iterator(config, global_batch_size=64, seed=3)
  fresh.set_state(state)
  assert _same(expected, _take(fresh, 5))


@pytest.mark.slow  # two training processes / grain worker processes: a minute under load
def test_restored_state_with_worker_processes(digits_dir):
  config = _config("digits", digits_dir, num_workers=2)
  iterator = data.make_train_iterator(config, global_batch_size=16, seed=5)
  single = _take(
    data.make_train_iterator(_config("digits", digits_dir), global_batch_size=16, seed=5), 10
  )
  first = _take(iterator, 7)
  state = iterator.get_state()
  expected = _take(iterator, 3)
  iterator.close()
  assert _same(first + expected, single)  # same order as in-process
  fresh = data.make_train_iterator(config, global_batch_size=16, seed=5)
  fresh.set_state(state)
  got = _take(fresh, 3)
  fresh.close()
  assert _same(expected, got)


def test_orbax_composite_checkpoint_of_the_iterator(digits_dir, tmp_path):
  config = _config("digits", digits_dir)
  params = {"w": np.arange(3.0, dtype=np.float32)}
  iterator = data.make_train_iterator(config, global_batch_size=32, seed=11)
  _take(iterator, 4)
  with ocp.CheckpointManager(
    tmp_path / "ckpt", options=ocp.CheckpointManagerOptions(max_to_keep=1)
  ) as manager:
    manager.save(
      4,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(params), data=grain.checkpoint.CheckpointSave(iterator)
      ),
    )
    manager.wait_until_finished()
  expected = _take(iterator, 3)

  fresh = data.make_train_iterator(config, global_batch_size=32, seed=11)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    restored = manager.restore(
      manager.latest_step(),
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"w": np.zeros(3, np.float32)}),
        data=grain.checkpoint.CheckpointRestore(fresh),
      ),
    )
  assert restored["data"] is fresh
  np.testing.assert_array_equal(restored["state"]["w"], params["w"])
  assert _same(expected, _take(fresh, 3))


# ---------------------------------------------------------------------------
# Evaluation batches: one masked pass, equal batch counts on every process.
# ---------------------------------------------------------------------------


def _eval_union(config, split, global_batch_size, count, num_processes):
  labelled = bool(data.lookup(config).num_classes)  # digits: yes; toy2d: no
  keys = {"image", "mask", "index"} | ({"label"} if labelled else set())
  per_process = []
  for index in range(count):
    num_processes(index, count)
    batches = list(data.eval_batches(config, split, global_batch_size=global_batch_size))
    rows = global_batch_size // count
    for b in batches:
      assert set(b) == keys
      assert b["image"].shape[0] == rows and b["image"].dtype == np.int32
      assert b["mask"].shape == (rows,) and b["mask"].dtype == np.float32
      assert b["index"].shape == (rows,) and b["index"].dtype == np.int32
      assert set(np.unique(b["mask"])) <= {0.0, 1.0}
      assert not b["image"][b["mask"] == 0].any()  # padding is zeros
    per_process.append(batches)
  assert len({len(batches) for batches in per_process}) == 1, [len(b) for b in per_process]
  # Every example carries its position in the split: the indices are 0..N-1, once each.
  indices = np.concatenate([b["index"][b["mask"] > 0] for bs in per_process for b in bs])
  np.testing.assert_array_equal(np.sort(indices), np.arange(indices.size))
  union = np.concatenate([b["image"][b["mask"] > 0] for batches in per_process for b in batches])
  return union[np.argsort(indices)]  # in the stored order, whatever the process count


@pytest.mark.parametrize(
  "count, global_batch_size",
  [(1, 64), (1, 300), (1, 7), (1, 1000), (3, 12), (7, 14), (4, 400)],
)
def test_eval_batches_cover_the_split_once(count, global_batch_size, digits_dir, num_processes):
  config = _config("digits", digits_dir)
  union = _eval_union(config, "test", global_batch_size, count, num_processes)
  assert union.shape == (300, 8, 8, 1)
  expected = load_digits().images[digits.split_indices()["test"]][..., None]
  np.testing.assert_array_equal(union, expected)  # union ordered by index: the stored order


def test_digits_batches_carry_the_labels(digits_dir):
  """Train and eval batches hold each image's own label; padding rows get label 0."""
  config = _config("digits", digits_dir)
  sk = load_digits()
  by_image = {sk.images[i].astype(np.int32).tobytes(): sk.target[i] for i in range(len(sk.target))}
  batch = next(data.make_train_iterator(config, global_batch_size=32, seed=0))
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  want = [by_image[img[..., 0].tobytes()] for img in batch["image"]]
  np.testing.assert_array_equal(batch["label"], want)
  batches = list(data.eval_batches(config, "test", global_batch_size=256))
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(labels, sk.target[digits.split_indices()["test"]])
  assert np.all(batches[-1]["label"][batches[-1]["mask"] == 0] == 0)
  assert "label" not in next(
    data.make_train_iterator(_config("toy2d"), global_batch_size=8, seed=0)
  )


def test_eval_batches_toy2d(num_processes):
  union = _eval_union(_config("toy2d"), "test", 96, 3, num_processes)
  np.testing.assert_array_equal(union, toy2d.load("test"))  # contiguous shards, in order


# ---------------------------------------------------------------------------
# Public datasets without a download: tfds mock data, real files, the missing-data error.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape", [("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1))])
def test_public_dataset_through_tfds_mock_data(name, shape, tmp_path):
  config = _config(name, tmp_path)
  with tfds.testing.mock_data(num_examples=10):
    data.prepare(config)
    info = data.dataset_info(config)
    assert info == data.DatasetInfo(name, shape, 256, {"train": 10, "test": 10})
    batch = next(data.make_train_iterator(config, global_batch_size=4, seed=0))
    assert batch["image"].shape == (4, *shape) and batch["image"].dtype == np.int32
    batches = list(data.eval_batches(config, "test", global_batch_size=4))
  assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 10
  assert batches[0]["image"].max() > 0


def test_more_processes_than_examples(tmp_path, num_processes):
  config = _config("cifar10", tmp_path)
  with tfds.testing.mock_data(num_examples=2):
    union = _eval_union(config, "test", 3, 3, num_processes)  # process 0 has no example
    assert union.shape == (2, 32, 32, 3)
    rows = []
    for index in range(3):  # one global order: each process still gets its row
      num_processes(index, 3)
      rows.append(_take(data.make_train_iterator(config, global_batch_size=3, seed=0), 2))
    epoch = np.concatenate([r[0] for r in rows])  # global batch 0: 3 rows of a 2-example split
    assert epoch.shape == (3, 32, 32, 3)


def test_imagenet32_test_split_is_tfds_validation(tmp_path):
  rng = np.random.default_rng(0)
  images = {
    "train": rng.integers(0, 256, (10, 32, 32, 3), np.uint8),
    "validation": rng.integers(0, 256, (5, 32, 32, 3), np.uint8),
  }
  requested = []

  def as_data_source(self, split, **kwargs):
    del self, kwargs
    requested.append(split)
    return [{"image": image} for image in images[split]]  # KeyError for any other split

  config = _config("imagenet32", tmp_path)
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    assert data.dataset_info(config).num_examples == {"train": 10, "test": 5}
    batches = list(data.eval_batches(config, "test", global_batch_size=2))
  assert set(requested) == {"train", "validation"}
  union = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(union, images["validation"])


def test_bad_image_shape_fails_with_a_message(tmp_path):
  # tfds' default mock draws images of random sizes for imagenet32's unknown shape.
  with tfds.testing.mock_data(num_examples=4):
    iterator = data.make_train_iterator(
      _config("imagenet32", tmp_path), global_batch_size=2, seed=0
    )
    with pytest.raises(
      ValueError, match=r"imagenet32 example.*expected integers of shape \(32, 32, 3\)"
    ):
      next(iterator)


@pytest.mark.parametrize(
  "name, tfds_name",
  [("cifar10", "cifar10"), ("mnist", "mnist"), ("imagenet32", "downsampled_imagenet/32x32")],
)
def test_public_dataset_not_prepared(name, tfds_name, tmp_path):
  config = _config(name, tmp_path)
  command = f"tfds build {tfds_name} --file_format=array_record --data_dir={tmp_path}"
  for call in [
    lambda: data.prepare(config),
    lambda: data.dataset_info(config),
    lambda: data.make_train_iterator(config, global_batch_size=8, seed=0),
  ]:
    with pytest.raises(FileNotFoundError) as error:
      call()
    # One paragraph naming the data_dir and what is missing, then the two commands.
    paragraph, *commands = str(error.value).split("\n")
    assert paragraph.startswith(f"The {name} dataset (tfds {tfds_name!r}) is not prepared")
    assert f"data_dir {str(tmp_path)!r}: there is no {tmp_path / tfds_name}." in paragraph
    assert "point --config.data.data_dir at a directory where it is prepared" in paragraph
    assert commands == ["  pip install -e '.[prepare]'", f"  {command}"]
  assert os.listdir(tmp_path) == []  # nothing downloaded or written


def test_public_dataset_prepared_as_tfrecord_says_so(tmp_path):
  version_dir = tmp_path / "mnist" / "3.0.1"
  version_dir.mkdir(parents=True)
  (version_dir / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match=r"holds TFRecord files.*--file_format=array_record"):
    data.prepare(_config("mnist", tmp_path))


@pytest.mark.parametrize("name", ["digits", "photos"])
def test_offline_dataset_into_an_unwritable_data_dir(name, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  cases = [(blocker / "tfds", f"{str(blocker)!r} is a file, not a directory")]
  read_only = _read_only_dir(tmp_path / "read_only")
  if read_only is not None:  # root writes anywhere: then only the first case applies
    cases.append((read_only, f"{str(read_only)!r} is not writable by this process"))
  for data_dir, problem in cases:
    with pytest.raises(ValueError) as error:
      data.prepare(_config(name, data_dir))
    assert isinstance(error.value, PermissionError)
    message = str(error.value)
    assert f"Cannot build the {name} dataset under data_dir {str(data_dir)!r}: " in message
    assert problem in message and "Set --config.data.data_dir=<writable dir>" in message
  # Nothing written: no lock, no partial dataset.
  assert blocker.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["a_file", "read_only"]
  assert os.listdir(tmp_path / "read_only") == []


def _read_only_dir(path):
  """A directory this process cannot write, or None where it can anyway (root)."""
  path.mkdir()
  path.chmod(0o555)
  return None if os.access(path, os.W_OK) else path


def _png(image):
  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format="png")
  return buffer.getvalue()


def test_cifar10_from_real_array_record_files(tmp_path):
  """The unmocked read path: array_record files with cifar10's own feature spec, PNG-encoded
  with PIL (the real builder needs TensorFlow to encode, and the network)."""
  rng = np.random.default_rng(0)
  images = {
    "train": rng.integers(0, 256, (10, 32, 32, 3), np.uint8),
    "test": rng.integers(0, 256, (7, 32, 32, 3), np.uint8),
  }
  with tfds.core.registered.skip_registration():

    class FakeCifar10(tfds.builder_cls("cifar10")):
      name = "cifar10"

      def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in images}

      def _generate_examples(self, split):
        for i, image in enumerate(images[split]):
          yield i, {"id": f"{split}_{i}", "image": _png(image), "label": i % 10}

  FakeCifar10(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
  config = _config("cifar10", tmp_path)
  data.prepare(config)
  assert data.dataset_info(config).num_examples == {"train": 10, "test": 7}
  for split in images:
    batches = list(data.eval_batches(config, split, global_batch_size=4))
    assert _rows(np.concatenate([b["image"][b["mask"] > 0] for b in batches])) == _rows(
      images[split]
    )
  batch = next(data.make_train_iterator(config, global_batch_size=4, seed=0))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.int32


# ---------------------------------------------------------------------------
# toy2d: the quantised mixture and its exact likelihood.
# ---------------------------------------------------------------------------


def test_toy2d_splits_are_fixed_and_quantised():
  train, test = toy2d.load("train"), toy2d.load("test")
  assert train.shape == (20_000, 2) and test.shape == (5_000, 2) and train.dtype == np.int32
  assert train.min() >= 0 and train.max() <= 255
  assert train is toy2d.load("train") and not train.flags.writeable
  np.testing.assert_array_equal(test, toy2d.quantise(toy2d.sample(5_000, toy2d._SEEDS["test"])))
  assert not np.array_equal(train[:5_000], test)
  np.testing.assert_allclose(np.linalg.norm(toy2d.MIXTURE_MEANS, axis=-1), 0.7)
  k = np.arange(256)
  np.testing.assert_array_equal(toy2d.quantise((2 * k + 1) / 256 - 1), k)  # bin centres
  np.testing.assert_array_equal(toy2d.quantise([-5.0, 5.0]), [0, 255])


def test_toy2d_log_prob_sums_to_one_over_all_bins():
  grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), axis=-1).reshape(
    -1, 2
  )
  log_p = toy2d.log_prob_quantised(grid)
  assert log_p.shape == (256 * 256,) and log_p.dtype == np.float64 and np.isfinite(log_p).all()
  assert abs(scipy.special.logsumexp(log_p)) < 1e-12


def test_toy2d_log_prob_against_cdf_differences():
  """Probabilities (not logs) from scipy.stats in float64, for sampled and edge bins."""
  edges = [[0, 128], [255, 128], [128, 0], [128, 255], [0, 0], [255, 255], [0, 255]]
  k = np.concatenate([toy2d.load("test")[:500], edges])
  low = np.where(k == 0, -np.inf, 2 * k / 256 - 1)[:, None, :]  # [B, 1, 2]
  high = np.where(k == 255, np.inf, 2 * (k + 1) / 256 - 1)[:, None, :]
  norm = scipy.stats.norm(toy2d.MIXTURE_MEANS, toy2d.MIXTURE_STD)  # [8, 2]
  # Upper tail through the survival function, so that 1 - Phi does not cancel to 0.
  mass = np.where(
    low > toy2d.MIXTURE_MEANS, norm.sf(low) - norm.sf(high), norm.cdf(high) - norm.cdf(low)
  )
  expected = np.log(np.mean(np.prod(mass, axis=-1), axis=-1))  # [B]
  log_p = toy2d.log_prob_quantised(k)
  np.testing.assert_allclose(log_p, expected, rtol=1e-9)
  assert (log_p[-3:] < -50).all()  # the corners: far from every mean, finite and exact


def test_toy2d_samples_follow_the_exact_probabilities():
  """E[-log P(k)] over draws is the entropy of the bins: a Monte Carlo check of both."""
  grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), axis=-1).reshape(
    -1, 2
  )
  log_p_grid = toy2d.log_prob_quantised(grid)
  entropy = -np.sum(np.exp(log_p_grid) * log_p_grid)
  nll = -toy2d.log_prob_quantised(toy2d.load("train"))
  standard_error = nll.std() / np.sqrt(nll.size)
  assert abs(nll.mean() - entropy) < 4 * standard_error, (nll.mean(), entropy, standard_error)


@pytest.mark.parametrize(
  "k, match",
  [
    (np.zeros((3, 2)), "integer"),
    (np.zeros((3,), np.int32), r"\[B, 2\]"),
    (np.array([[0, 256]]), "255"),
  ],
)
def test_toy2d_log_prob_rejects_bad_input(k, match):
  with pytest.raises(ValueError, match=match):
    toy2d.log_prob_quantised(k)
