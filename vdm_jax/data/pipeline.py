"""The input pipeline: tfds array_record data (or in-memory arrays) -> grain -> batches.

Which datasets exist, and how a `data.name` resolves to one, is `vdm_jax.data.catalogue`
(its `lookup` and `splits` are re-exported here and from `vdm_jax.data`).

Every dataset is read through a random-access source (`tfds.data_source` /
`builder.as_data_source` over array_record files, or a NumPy array for toy2d) wrapped in a
grain `MapDataset`. No path imports TensorFlow: images in array_record are decoded with
PIL, and nothing here ever downloads (`tfds.load` with no network hangs for minutes).

Records are `{"image": int32 array of DatasetInfo.shape}` with values in
{0, ..., vocab_size - 1}, and for a labelled dataset (`DatasetInfo.num_classes` C > 0, e.g.
digits) also `"label"`: int32 in {0, ..., C - 1}. Every dataset has the splits "train" and
"test" (for imagenet32, "test" is tfds's "validation" split, the one papers report).

Training (`make_train_iterator`): one global order of the train split, shuffled with
`seed`, reshuffled every epoch and repeated forever; global batch b is the rows
[b G, (b + 1) G) of that stream (G = `global_batch_size`, batches run across epoch
boundaries), and process p of P reads only its slice [b G + p R, b G + (p + 1) R),
R = G / P. So the sequence of global batches, and the trained parameters, are the same for
1 process x N devices and P processes x N/P devices. The position in the stream is a
function of the step alone: a run resumes by building the iterator at `start_step`, on any
number of processes (no per-process iterator state is saved):

  >>> import numpy as np
  >>> from vdm_jax.data import make_train_iterator
  >>> data_config = type("DataConfig", (), {"name": "toy2d", "data_dir": "", "num_workers": 0})
  >>> it = make_train_iterator(data_config, global_batch_size=128, seed=0)
  >>> first, second = next(it)["image"], next(it)["image"]
  >>> first.shape, first.dtype     # int32 [B, *shape]
  ((128, 2), dtype('int32'))
  >>> resumed = make_train_iterator(data_config, global_batch_size=128, seed=0, start_step=1)
  >>> bool(np.array_equal(next(resumed)["image"], second))   # the position is the step
  True

Evaluation (`eval_batches`): one pass in the stored order, each process a contiguous slice;
every batch has `global_batch_size // jax.process_count()` rows and a float32 `"mask"`
(0 for zero padding); all processes yield the same number of batches, so a collective
step per batch never waits for a process that has run out.

Call `jax.distributed.initialize()` (several hosts) before building iterators: the
process index and count are read when the pipeline is built.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Iterator, Mapping

import grain
import jax
import numpy as np
from absl import flags

from vdm_jax._arith import ceil_div
from vdm_jax.data.catalogue import lookup, splits
from vdm_jax.data.registry import DATASETS, Dataset, check_split, register

__all__ = [
  "DATASETS",
  "Dataset",
  "DatasetInfo",
  "dataset_info",
  "eval_batches",
  "first_examples",
  "lookup",
  "make_train_iterator",
  "prepare",
  "register",
  "splits",
]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the rest of the project needs to know about a dataset.

  Attributes:
    name: `data.name`: a key of `DATASETS` or a dataset imported into `data.data_dir`.
    shape: per-example shape, e.g. (8, 8, 1) digits, (32, 32, 3) cifar10, (2,) toy2d.
    vocab_size: V, the number of integer levels per dimension (17 digits, 256 otherwise).
    num_examples: split name -> number of examples, e.g. {"train": 1497, "test": 300};
      indexing it with another split raises ValueError naming the splits (not KeyError).
    num_classes: C, the number of labels of a labelled dataset (10 for digits), else 0.
  """

  name: str
  shape: tuple[int, ...]
  vocab_size: int
  num_examples: dict[str, int]
  num_classes: int = 0

  def __post_init__(self):
    object.__setattr__(self, "num_examples", _SplitSizes(self.name, self.num_examples))

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.num_examples)

  @property
  def num_dims(self) -> int:
    """D, the number of data dimensions (H * W * C), for bits/dim = nats / (D ln 2)."""
    return math.prod(self.shape)


class _SplitSizes(dict):
  """split -> number of examples, whose missing split is the ValueError of `check_split`.

  Callers index `dataset_info(...).num_examples[split]` with a user's split name; this
  makes a typo there the same one-line error as everywhere else a split is taken.
  """

  def __init__(self, name: str, sizes):
    super().__init__(sizes)
    self.name = name

  def __missing__(self, split):
    if not self:
      raise KeyError(
        f"The split sizes of {self.name} are known from its prepared files only: use "
        "dataset_info, not static_info."
      )
    check_split(self.name, tuple(self), split)


# ---------------------------------------------------------------------------
# Config checks and sources (the datasets themselves: `vdm_jax.data.catalogue`).
# ---------------------------------------------------------------------------


def _data_dir(data_config) -> str:
  data_dir = getattr(data_config, "data_dir", None)
  if not isinstance(data_dir, (str, os.PathLike)) or not os.fspath(data_dir):
    raise ValueError(
      f"data.data_dir must name the tfds data directory for dataset {data_config.name!r}, "
      f"got {data_dir!r}."
    )
  if "://" in os.fspath(data_dir):
    raise ValueError(
      f"data.data_dir={os.fspath(data_dir)!r}: datasets are read from a folder of this host "
      "(array_record files, read with local file calls), not from an object store. Copy the "
      "prepared dataset to each host (e.g. gcloud storage cp -r gs://.../digits "
      "~/tensorflow_datasets/) or to a shared mount, and point data.data_dir there; the "
      "work directory (--workdir) may be gs:// (docs/cloud_storage.md)."
    )
  return os.path.expanduser(os.fspath(data_dir))


def _num_workers(data_config) -> int:
  num_workers = getattr(data_config, "num_workers", 0)
  if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
    raise ValueError(
      f"data.num_workers must be an int >= 0 (0 reads in the main process), got {num_workers!r}."
    )
  return num_workers


def _source(data_config, split: str):
  """A random-access source (`len`, `[i]`) of raw examples of one split."""
  dataset = lookup(data_config)
  dataset.check_split(split)
  return dataset.source(_data_dir(data_config) if dataset.uses_data_dir else None, split)


def dataset_info(data_config) -> DatasetInfo:
  """Shape, vocabulary size and split sizes of `data_config.name`.

  For the public image datasets the split sizes are those of the prepared files, so the
  data must be prepared (else FileNotFoundError with the command that prepares them).

  Args:
    data_config: has `name` (a key of `DATASETS`, or a dataset imported into `data_dir`)
      and `data_dir`.

  Returns:
    a `DatasetInfo`.
  """
  dataset = lookup(data_config)
  num_examples = dataset.num_examples
  if num_examples is None:
    num_examples = {split: len(_source(data_config, split)) for split in dataset.splits}
  return DatasetInfo(
    dataset.name, dataset.shape, dataset.vocab_size, dict(num_examples), dataset.num_classes
  )


def prepare(data_config) -> None:
  """Makes `data_config.name` readable; idempotent, offline and quick.

  * digits, photos: build the array_record files under `data_dir` unless already built
    (digits ~1 s, photos a few seconds).
  * toy2d: nothing to do (generated in memory).
  * cifar10, mnist, imagenet32, and datasets imported by `vdm-import-images`: check that
    every split is prepared as array_record under `data_dir`; if not, raise
    FileNotFoundError with the command that prepares it (this library never downloads).

  Args:
    data_config: has `name` and `data_dir`.
  """
  dataset = lookup(data_config)
  dataset.prepare(_data_dir(data_config) if dataset.uses_data_dir else None)


# ---------------------------------------------------------------------------
# Records, sharding, batching.
# ---------------------------------------------------------------------------


def _to_record(
  example, *, name: str, shape: tuple[int, ...], vocab_size: int, num_classes: int = 0
) -> dict:
  """Raw example -> {"image": int32 `shape`} (and "label": int32 when `num_classes`),
  checking shape and range (bad data fail early)."""
  image = np.asarray(example["image"] if isinstance(example, Mapping) else example)
  if image.shape != shape or not np.issubdtype(image.dtype, np.integer):
    raise ValueError(
      f"A {name} example has an image of shape {image.shape} and dtype {image.dtype}; "
      f"expected integers of shape {shape}. The files under data_dir do not hold this dataset."
    )
  if image.min() < 0 or image.max() >= vocab_size:
    raise ValueError(
      f"A {name} example has values in [{image.min()}, {image.max()}]; expected "
      f"{{0, ..., {vocab_size - 1}}}."
    )
  if not num_classes:
    return {"image": image.astype(np.int32)}
  label = np.asarray(example["label"] if isinstance(example, Mapping) else -1)
  if (
    label.shape != () or not np.issubdtype(label.dtype, np.integer) or not 0 <= label < num_classes
  ):
    raise ValueError(
      f"A {name} example has label {label!r}; expected an integer in {{0, ..., "
      f"{num_classes - 1}}}. The files under data_dir do not hold this dataset."
    )
  return {"image": image.astype(np.int32), "label": label.astype(np.int32)}


def _records(data_config, split: str, info: DatasetInfo):
  """Returns the split as a grain `MapDataset` of raw examples, and the record transform."""
  to_record = functools.partial(
    _to_record,
    name=info.name,
    shape=info.shape,
    vocab_size=info.vocab_size,
    num_classes=info.num_classes,
  )
  return grain.MapDataset.source(_source(data_config, split)), to_record


def static_info(data_config) -> DatasetInfo:
  """`dataset_info` without opening the data files: shape and V, with empty `num_examples`
  for the public datasets (whose split sizes come from the prepared files)."""
  dataset = lookup(data_config)
  num_examples = dict(dataset.num_examples) if dataset.num_examples is not None else {}
  return DatasetInfo(
    dataset.name, dataset.shape, dataset.vocab_size, num_examples, dataset.num_classes
  )


def _rows_per_process(global_batch_size) -> tuple[int, int, int]:
  """Returns (rows per process, process index, process count)."""
  index, count = jax.process_index(), jax.process_count()
  if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, int):
    raise ValueError(f"global_batch_size must be a positive int, got {global_batch_size!r}.")
  if global_batch_size <= 0 or global_batch_size % count:
    raise ValueError(
      f"global_batch_size ({global_batch_size}) must be a positive multiple of the number "
      f"of processes ({count})."
    )
  return global_batch_size // count, index, count


def _shard_bounds(num_examples: int, index: int, count: int) -> tuple[int, int]:
  """Contiguous near-equal slice [start, end) of process `index` out of `count`."""
  return index * num_examples // count, (index + 1) * num_examples // count


def _to_iter_dataset(ds: grain.MapDataset, rows: int, *, drop_remainder: bool, num_workers: int):
  # Batching the MapDataset (before any prefetch) makes a batch's examples a fixed slice of
  # the index space, so the batches are the same whatever the number of reading threads
  # or worker processes (workers take whole batches in turn). Threads assemble batches
  # in parallel (PNG decoding releases the GIL).
  ds = ds.batch(rows, drop_remainder=drop_remainder)
  iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=8))
  if num_workers:
    _make_grain_flags_readable()
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return iter_ds


# grain flags that grain (0.2.18, the newest at the time of writing) reads with
# `FlagHolder.value` when worker processes start: outside an absl app, whose flags are
# never parsed, that raises UnparsedFlagAccessError (google/grain#1355).
_GRAIN_FLAGS_READ_UNPARSED = ("grain_enable_multiprocess_worker_profiling",)


def _make_grain_flags_readable() -> None:
  """Lets grain read its own flags at their defaults when no absl app parsed the flags.

  absl lets a flag be read before parsing when the flag is marked present, which is how
  grain itself sets its flags in its worker processes. Only grain's flags are marked,
  and only while the command line is unparsed: the program's other flags, and whether
  they count as parsed, are left alone (a later `app.run` still parses every flag).
  """
  if flags.FLAGS.is_parsed():
    return
  for name in _GRAIN_FLAGS_READ_UNPARSED:
    if name in flags.FLAGS and not flags.FLAGS[name].present:
      flags.FLAGS[name].present = 1


class _ProcessRows:
  """Row j of process p -> the global stream's row (j // R) G + p R + j % R (picklable, so
  that grain worker processes can run it)."""

  def __init__(self, stream, rows: int, global_batch_size: int, index: int):
    self.stream, self.rows, self.global_batch_size, self.index = (
      stream,
      rows,
      global_batch_size,
      index,
    )

  def __call__(self, j):
    b, r = divmod(int(j), self.rows)
    return self.stream[b * self.global_batch_size + self.index * self.rows + r]


def make_train_iterator(
  data_config, *, global_batch_size: int, seed: int, start_step: int = 0
) -> grain.DatasetIterator:
  """Infinite, per-epoch reshuffled train batches: this process's rows of each global batch.

  Args:
    data_config: has `name`, `data_dir` and `num_workers` (grain worker processes; 0 reads
      in this process with threads).
    global_batch_size: rows per step over all processes; must be a multiple of
      `jax.process_count()`.
    seed: int in [0, 2**32); the same seed gives the same order, epoch after epoch.
    start_step: the first global batch to yield (a resumed run's step).

  Returns:
    a `grain.DatasetIterator` of {"image": int32 [global_batch_size // process_count,
    *shape]} (and "label": int32 [rows] for a labelled dataset), global batches start_step, start_step + 1, ... The order depends on
    `seed` and `global_batch_size` only, not on the number of processes.
  """
  info = static_info(data_config)
  num_workers = _num_workers(data_config)
  rows, index, count = _rows_per_process(global_batch_size)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}.")
  if (
    isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or start_step < 0
  ):
    raise ValueError(f"start_step must be an int >= 0, got {start_step!r}.")
  ds, to_record = _records(data_config, "train", info)
  if len(ds) == 0:
    raise ValueError(f"The {info.name} train split is empty.")
  stream = ds.seed(int(seed)).shuffle().repeat()  # the global order
  local = grain.MapDataset.range(int(start_step) * rows, 2**62)
  local = local.map(_ProcessRows(stream, rows, global_batch_size, index)).map(to_record)
  return iter(_to_iter_dataset(local, rows, drop_remainder=True, num_workers=num_workers))


def eval_batches(data_config, split: str, *, global_batch_size: int) -> Iterator[dict]:
  """One pass over `split` in its stored order, padded to equal batches on every process.

  Process p of P reads the contiguous slice [p N // P, (p + 1) N // P) of the N examples.
  Every batch has R = global_batch_size // P rows; the last batch with data is padded with
  zeros, and processes with fewer examples add all-padding batches, so that every process
  yields ceil(ceil(N / P) / R) batches. The masked union over batches and processes is the
  split, each example exactly once.

  Args:
    data_config: has `name`, `data_dir` and `num_workers`.
    split: a split of the dataset (`dataset_info(data_config).splits`).
    global_batch_size: rows per step over all processes; a multiple of the process count.

  Returns:
    an iterator of {"image": int32 [R, *shape], "mask": float32 [R], "index": int32 [R]}
    (and "label": int32 [R], 0 for padding, for a labelled dataset) (mask 1.0 for real examples, 0.0 for padding; index: the example's position in the
    split, 0 for padding), so that per-example randomness can be keyed by the example,
    not by its batch.
  """
  lookup(data_config).check_split(split)
  info = static_info(data_config)
  num_workers = _num_workers(data_config)
  rows, index, count = _rows_per_process(global_batch_size)
  ds, to_record = _records(data_config, split, info)
  num_examples = len(ds)
  start, end = _shard_bounds(num_examples, index, count)
  num_batches = ceil_div(ceil_div(num_examples, count), rows)  # the longest shard's
  shard = ds[start:end].map(to_record)
  batches = _to_iter_dataset(shard, rows, drop_remainder=False, num_workers=num_workers)
  empty = {"image": np.zeros((0, *info.shape), np.int32)}
  if info.num_classes:
    empty["label"] = np.zeros((0,), np.int32)
  return _padded(batches, num_batches, rows, empty, start)


def first_examples(data_config, split: str, num_examples: int) -> dict[str, np.ndarray]:
  """The first `num_examples` examples of `split` in its stored order, as one batch.

  The same rows on every process (unlike `eval_batches`, which gives each process its own
  slice): for diagnostics on a few examples. Reads only those examples, and leaves no
  reader open.

  Args:
    data_config: has `name` and `data_dir`.
    split: a split of the dataset.
    num_examples: how many (an int >= 1); a shorter split gives all of its examples.

  Returns:
    {"image": int32 [n, *shape]} (and "label": int32 [n] for a labelled dataset), n =
    min(num_examples, size of the split).
  """
  if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
    raise ValueError(f"num_examples must be an int >= 1, got {num_examples!r}.")
  lookup(data_config).check_split(split)
  info = static_info(data_config)
  ds, to_record = _records(data_config, split, info)
  if len(ds) == 0:
    raise ValueError(f"The {info.name} {split} split is empty.")
  records = [to_record(ds[i]) for i in range(min(num_examples, len(ds)))]
  return {name: np.stack([r[name] for r in records]) for name in records[0]}


def _padded(batches, num_batches: int, rows: int, empty: dict, start: int) -> Iterator[dict]:
  produced, next_index = 0, start
  iterator = iter(batches)
  try:
    for batch in iterator:
      produced += 1
      padded = _pad(batch, rows, next_index)
      next_index += batch["image"].shape[0]
      yield padded
  finally:
    iterator.close()  # stops prefetch threads and worker processes, even if not exhausted
  for _ in range(num_batches - produced):
    yield _pad(empty, rows, 0)


def _pad(batch: dict, rows: int, first_index: int) -> dict:
  """Pads each field of `batch` with zero rows to `rows`; adds "mask" and "index"."""
  real = batch["image"].shape[0]
  mask = np.zeros((rows,), np.float32)
  mask[:real] = 1.0
  index = np.zeros((rows,), np.int32)
  index[:real] = np.arange(first_index, first_index + real)
  out = {
    name: np.concatenate([v, np.zeros((rows - real, *v.shape[1:]), v.dtype)]) if real < rows else v
    for name, v in batch.items()
  }
  return out | {"mask": mask, "index": index}
