"""Data (README "Layout": layer 3): tfds builders and readers, the grain input pipeline.

* `vdm_jax.data.pipeline`: `dataset_info`, `prepare`, `make_train_iterator`,
  `eval_batches`, `first_examples` for every dataset in `DATASETS` (re-exported here).
* `DATASETS`: the registry, name -> `Dataset`; `register` adds one, `lookup` resolves
  `data.name` (a registered name, or a folder of images imported into `data.data_dir`).
  `vdm_jax.data.catalogue` registers the built-in datasets and holds `lookup`.
* `vdm_jax.data.digits`: scikit-learn's 8x8 digits as an offline tfds builder (V = 17).
* `vdm_jax.data.photos`: 32x32 RGB patches of six photos shipped by scikit-learn and
  scikit-image, as an offline tfds builder (V = 256, CIFAR-shaped).
* `vdm_jax.data.folder`: a folder of your PNG/JPEG images -> a tfds array_record dataset
  (`vdm-import-images`).
* `vdm_jax.data.toy2d`: a quantised 2-D Gaussian mixture with its exact likelihood.

`data_config` is the `data` field of the experiment config (an `ml_collections.ConfigDict`
or any object with attributes): `name` (a key of `DATASETS` or an imported dataset),
`data_dir` (the tfds data directory) and `num_workers` (grain worker processes, 0 =
in-process). Every dataset has the splits "train" and "test". Nothing here imports TensorFlow or downloads.
"""

from vdm_jax.data import digits, photos, toy2d
from vdm_jax.data.pipeline import (
  DATASETS,
  Dataset,
  DatasetInfo,
  dataset_info,
  eval_batches,
  first_examples,
  lookup,
  make_train_iterator,
  prepare,
  register,
  splits,
  static_info,
)

__all__ = [
  "DATASETS",
  "Dataset",
  "DatasetInfo",
  "dataset_info",
  "digits",
  "eval_batches",
  "first_examples",
  "lookup",
  "make_train_iterator",
  "photos",
  "prepare",
  "register",
  "splits",
  "static_info",
  "toy2d",
]
