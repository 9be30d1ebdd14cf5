"""What the offline tfds builders (digits, photo patches) share: reading a prepared split."""

from __future__ import annotations

import os

__all__ = ["prepared_source"]


def prepared_source(
  builder, data_dir: str, split: str, *, name: str, module: str, splits, build_time: str
):
  """`builder.as_data_source(split)`, or a clear error if `split` or the files are missing.

  Args:
    builder: a tfds builder of array_record files.
    data_dir: the tfds data directory it reads (for the message).
    split: the split to read.
    name: the dataset's name in messages ("digits").
    module: the builder's module under `vdm_jax.data` ("digits"), for the prepare hint.
    splits: the dataset's split names.
    build_time: how long building takes, for the message ("about a second").
  """
  if split not in splits:
    raise ValueError(f"Unknown {name} split {split!r}; the splits are {tuple(splits)}.")
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"The {name} dataset is not prepared under data_dir {os.fspath(data_dir)!r} "
      f"(looked for {os.fspath(builder.data_path)}). Build it once, offline, in "
      f"{build_time}: `vdm_jax.data.prepare(data_config)` (or "
      f"`vdm_jax.data.{module}.prepare(data_dir)`)."
    )
  return builder.as_data_source(split=split)
