"""The dataset catalogue: every built-in `data.name`, and `lookup`, which resolves a name.

Each built-in dataset is one `register(Dataset(...))` below: digits and photos (offline
tfds builders, prepared in seconds), toy2d (generated in memory), and the public image
datasets cifar10, mnist and imagenet32, which are prepared beforehand with the `tfds
build` command line (this library never downloads). `lookup` finds a name here, or else a
dataset that `vdm-import-images` wrote into `data.data_dir`. Reading the data is
`vdm_jax.data.pipeline`'s job; this module only says what exists and where.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types

import tensorflow_datasets as tfds

from vdm_jax.data import digits, folder, photos, toy2d
from vdm_jax.data.registry import DATASETS, Dataset, check_split, register

__all__ = ["lookup", "splits"]


# Public image datasets: prepared beforehand with the `tfds build` command line.


@dataclasses.dataclass(frozen=True)
class _Public:
  tfds_name: str
  shape: tuple[int, ...]
  tfds_splits: dict[str, str]  # our split name -> the tfds split name


_PUBLIC = {
  "cifar10": _Public("cifar10", (32, 32, 3), {"train": "train", "test": "test"}),
  "mnist": _Public("mnist", (28, 28, 1), {"train": "train", "test": "test"}),
  # ImageNet 32x32 of van den Oord et al. (2016) has no test split: its held-out split,
  # tfds "validation", is the one papers (VDM included) report as test. Calling it "test"
  # here keeps one pair of split names for every dataset.
  "imagenet32": _Public(
    "downsampled_imagenet/32x32", (32, 32, 3), {"train": "train", "test": "validation"}
  ),
}


def _prepare_command(tfds_name: str, data_dir: str) -> str:
  return (
    f"pip install -e '.[prepare]'\n  "
    f"tfds build {tfds_name} --file_format=array_record --data_dir={data_dir}"
  )


def _public_source(name: str, data_dir: str, split: str):
  tfds_name = _PUBLIC[name].tfds_name
  tfds_split = _PUBLIC[name].tfds_splits[check_split(name, _PUBLIC[name].tfds_splits, split)]
  try:
    # `download=False`: read what is on disk, never fetch. With no `dataset_info.json`
    # under data_dir, tfds assumes TFRecord and raises NotImplementedError.
    return tfds.data_source(tfds_name, split=tfds_split, data_dir=data_dir, download=False)
  except (NotImplementedError, FileNotFoundError, ValueError) as e:
    raise FileNotFoundError(
      f"The {name} dataset (tfds {tfds_name!r}) is not prepared as array_record under "
      f"data_dir {data_dir!r}: {_found(data_dir, tfds_name, e)}. Prepare it once, on a "
      "machine with network access (building needs TensorFlow to decode the originals), "
      "or point --config.data.data_dir at a directory where it is prepared:\n  "
      f"{_prepare_command(tfds_name, data_dir)}"
    ) from e


def _found(data_dir: str, tfds_name: str, error: Exception) -> str:
  """What is under data_dir instead of the prepared dataset (tfds's own error says only
  that it cannot read TFRecord files when there is nothing at all)."""
  dataset_dir = os.path.join(data_dir, *tfds_name.split("/"))
  if not os.path.isdir(data_dir):
    return "that directory does not exist"
  if not os.path.isdir(dataset_dir):
    return f"there is no {dataset_dir}"
  files = [f for _, _, names in os.walk(dataset_dir) for f in names]
  if any(".tfrecord" in f for f in files) and not any(".array_record" in f for f in files):
    return (
      f"{dataset_dir} holds TFRecord files (tfds build's default format), which cannot be "
      "read at random: build it again with --file_format=array_record"
    )
  detail = str(error).splitlines()[0] if str(error) else "no detail"
  return f"{dataset_dir} holds no readable array_record files ({type(error).__name__}: {detail})"


def _check_public(name: str, data_dir: str) -> None:
  for split in _PUBLIC[name].tfds_splits:
    _public_source(name, data_dir, split)


def _offline(name: str, module, *, num_classes: int = 0) -> Dataset:
  """A dataset built offline by a tfds builder of this package (`data.digits`,
  `data.photos`): each module declares the same constants and functions."""
  return Dataset(
    name=name,
    splits=tuple(module.NUM_EXAMPLES),
    source=module.data_source,
    prepare=module.prepare,
    shape=module.SHAPE,
    vocab_size=module.VOCAB_SIZE,
    num_examples=dict(module.NUM_EXAMPLES),
    num_classes=num_classes,
  )


register(_offline("digits", digits, num_classes=digits.NUM_CLASSES))
register(
  Dataset(
    name="toy2d",
    splits=tuple(toy2d.NUM_EXAMPLES),
    source=lambda data_dir, split: toy2d.load(split),  # [N, 2] int32; an array is a source
    prepare=lambda data_dir: None,  # generated in memory
    shape=toy2d.SHAPE,
    vocab_size=toy2d.VOCAB_SIZE,
    num_examples=dict(toy2d.NUM_EXAMPLES),
    uses_data_dir=False,
  )
)
for _name, _public in _PUBLIC.items():
  register(
    Dataset(
      name=_name,
      splits=tuple(_public.tfds_splits),
      source=functools.partial(_public_source, _name),
      prepare=functools.partial(_check_public, _name),
      shape=_public.shape,
      vocab_size=256,
      num_examples=None,  # the prepared files know the split sizes
    )
  )
del _name, _public
register(_offline("photos", photos))


def lookup(data_config) -> Dataset:
  """The dataset `data_config.name` selects: registered, or imported into `data_dir`.

  Raises:
    ValueError: naming the unknown name, the registered datasets, the data_dir searched
      (expanded) and the datasets imported there (by `vdm-import-images`), and how to import
      one or where `data.data_dir` should point.
  """
  name = getattr(data_config, "name", None)
  if name in DATASETS:
    return DATASETS[name]
  data_dir = getattr(data_config, "data_dir", None)
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir))) if data_dir else None
  if isinstance(name, str) and data_dir:
    dataset = folder.find(data_dir, name)
    if dataset is not None:
      return dataset
  raise ValueError(_unknown_dataset(name, data_dir))


def _unknown_dataset(name, data_dir: str | None) -> str:
  """The message of `lookup`: what was searched, what is there, and the ways out."""
  if data_dir is None:
    searched = "no data_dir is set (data.data_dir), so no imported dataset was searched for"
  elif not os.path.isdir(data_dir):
    searched = f"the data_dir {data_dir!r} searched for imported datasets does not exist"
  else:
    imported = folder.imported_names(data_dir)
    searched = f"the data_dir {data_dir!r} holds " + (
      f"the imported datasets {tuple(imported)}" if imported else "no imported dataset"
    )
    if isinstance(name, str) and os.path.exists(os.path.join(data_dir, name)):
      searched += (
        f" ({os.path.join(data_dir, name)!r} exists but is no complete dataset written by "
        "vdm-import-images)"
      )
  example = name if isinstance(name, str) and folder.valid_name(name) else "NAME"
  return (
    f"Unknown dataset data.name={name!r}: the registered datasets are {tuple(DATASETS)}, "
    f"and {searched}. If {name!r} was imported into another directory, point "
    "--config.data.data_dir at that directory; otherwise import a folder of your images "
    f"with `vdm-import-images --images=DIR --name={example} --data_dir="
    f"{data_dir or 'DATA_DIR'}` (then --config.data.name={example})."
  )


def splits(name: str, data_dir: str | None = None) -> tuple[str, ...]:
  """The split names of dataset `name`, known without opening data files.

  Args:
    name: a key of `DATASETS`, or a dataset imported into `data_dir`.
    data_dir: where imported datasets are looked up (None: registered datasets only).
  """
  return lookup(types.SimpleNamespace(name=name, data_dir=data_dir)).splits
