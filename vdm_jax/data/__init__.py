"""Data (DESIGN §3, layer 3): tfds builders and readers, the grain input pipeline.

* `vdm_jax.data.pipeline`: `dataset_info`, `prepare`, `make_train_iterator`,
  `eval_batches` for every dataset in `DATASETS` (re-exported here).
* `vdm_jax.data.digits`: scikit-learn's 8x8 digits as an offline tfds builder (V = 17).
* `vdm_jax.data.toy2d`: a quantised 2-D Gaussian mixture with its exact likelihood.

`data_config` is the `data` field of the experiment config (an `ml_collections.ConfigDict`
or any object with attributes): `name` (one of `DATASETS`), `data_dir` (the tfds data
directory) and `num_workers` (grain worker processes, 0 = in-process). Every dataset has
the splits "train" and "test". Nothing here imports TensorFlow or downloads.
"""

from vdm_jax.data import digits, toy2d
from vdm_jax.data.pipeline import (
  DATASETS,
  DatasetInfo,
  dataset_info,
  eval_batches,
  make_train_iterator,
  prepare,
  splits,
  static_info,
)

__all__ = [
  "DATASETS",
  "DatasetInfo",
  "dataset_info",
  "digits",
  "eval_batches",
  "make_train_iterator",
  "prepare",
  "splits",
  "static_info",
  "toy2d",
]
