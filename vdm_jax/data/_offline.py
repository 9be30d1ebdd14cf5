"""What the offline tfds builders (digits, photo patches, imported folders) share: reading a
prepared split, and checking that a data_dir can take a new dataset before writing any."""

from __future__ import annotations

import os

from vdm_jax.data.registry import check_split

__all__ = ["DataDirNotWritableError", "check_writable", "not_writable", "prepared_source"]


class DataDirNotWritableError(PermissionError, ValueError):
  """A data_dir where a dataset must be written cannot be: both an OSError (what it is) and
  a ValueError (a setting to change), like `io.UnsupportedOperation`."""


def not_writable(path: str) -> str | None:
  """Why `path` (a directory to write in, created if missing) cannot be written, or None.

  Looks at the nearest existing ancestor, which is where the first directory would be
  created: it must be a directory that this process may write (`os.access`, which also
  reports read-only file systems, for root too). Nothing is created.
  """
  existing = os.path.abspath(path)
  while not os.path.exists(existing) and os.path.dirname(existing) != existing:
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    return f"{existing!r} is a file, not a directory"
  if not os.access(existing, os.W_OK | os.X_OK):
    return f"{existing!r} is not writable by this process"
  return None


def check_writable(data_dir: str, dataset_dir: str, *, name: str, build_time: str) -> None:
  """Raises DataDirNotWritableError before building `name` into `dataset_dir` (under
  `data_dir`) if that directory cannot be written; nothing is written either way."""
  problem = not_writable(dataset_dir)
  if problem is not None:
    raise DataDirNotWritableError(
      f"Cannot build the {name} dataset under data_dir {data_dir!r}: {problem}. Nothing was "
      "written. Set --config.data.data_dir=<writable dir> (data.data_dir), a directory this "
      f"process can write: the dataset is built there once, offline, in {build_time}."
    )


def prepare(builder, data_dir: str, *, name: str, build_time: str) -> None:
  """Builds the tfds `builder`'s dataset (array_record) unless it is already prepared,
  after `check_writable`: idempotent, and nothing is written when it cannot be built."""
  if not builder.is_prepared():
    check_writable(data_dir, os.path.dirname(builder.data_path), name=name, build_time=build_time)
    builder.download_and_prepare(file_format="array_record")


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
  check_split(name, splits, split)
  if not builder.is_prepared():
    raise FileNotFoundError(
      f"The {name} dataset is not prepared under data_dir {os.fspath(data_dir)!r} "
      f"(looked for {os.fspath(builder.data_path)}). Build it once, offline, in "
      f"{build_time}: `vdm_jax.data.prepare(data_config)` (or "
      f"`vdm_jax.data.{module}.prepare(data_dir)`)."
    )
  return builder.as_data_source(split=split)
