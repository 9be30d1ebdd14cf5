"""The path layer of a work directory: every read and write of a run goes through here, so a
`--workdir` may be a local folder or a Google Cloud Storage location (`gs://bucket/path`).

Local paths use the operating system's calls (the behaviour of a local work directory is
unchanged); `gs://` paths use `etils.epath` (which orbax uses for its own files; gcsfs
underneath), installed with the `gcs` extra (`pip install 'vdm_jax[gcs]'`).

What differs on an object store, and how this module deals with it:

* No atomic rename. `write_atomic` writes a local file to a temporary name, fsyncs it and
  renames it over the target (a reader sees the old or the new file, never half of one);
  on GCS it uploads the whole object in one request, and an object becomes visible only
  once its upload is complete, so a reader again sees the old or the new version.
* No append. A caller that appends (the metrics log) keeps the rows and rewrites the
  whole object (`write_atomic`), see `training.metrics.MetricWriter`.
* No directories. `makedirs` is a no-op, `isdir` means "some object has this prefix", and
  `move_tree` copies every object, then deletes the originals (not atomic: see there).
* No `flock`. The run lock is a lease object (`runtime.workdir.LeaseLock`).

Pointing it at GCS or an emulator is the environment's job (`configure_environment`): real
GCS needs credentials (Application Default Credentials: `gcloud auth application-default
login`, or a VM's service account); an emulator is named by `STORAGE_EMULATOR_HOST`
(`http://127.0.0.1:PORT`), which gcsfs and google-cloud-storage read, and from which this
module derives what tensorstore (orbax's array store) reads. Standard library at import
time; etils is imported when a path is used.
"""

from __future__ import annotations

import os
import posixpath
import shutil

__all__ = [
  "SCHEMES",
  "configure_environment",
  "dirname",
  "exists",
  "isdir",
  "isfile",
  "is_remote",
  "join",
  "listdir",
  "makedirs",
  "move_tree",
  "read_bytes",
  "read_text",
  "remove",
  "remove_tree",
  "resolve",
  "write_atomic",
]

SCHEMES = ("gs",)  # the object stores supported (and tested, against a GCS emulator)
"""The URL schemes of the object stores supported (tested against a GCS emulator)."""


def is_remote(path) -> bool:
  """Whether `path` is a URL (`gs://...`) rather than a local path."""
  return "://" in os.fspath(path)


def resolve(path) -> str:
  """The canonical form of a work directory or file path: local paths absolute (`~`
  expanded), URLs without a trailing slash.

  Raises:
    ValueError for a URL of a scheme other than `gs://`, or one without a bucket.
  """
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.abspath(os.path.expanduser(path))
  scheme, _, rest = path.partition("://")
  if scheme not in SCHEMES:
    raise ValueError(
      f"{path!r}: {scheme}:// paths are not supported; a work directory is a local folder "
      "or a Google Cloud Storage location gs://bucket/path."
    )
  rest = rest.strip("/")
  if not rest:
    raise ValueError(f"{path!r} names no bucket: use gs://bucket/path.")
  configure_environment()
  return f"{scheme}://{rest}"


def configure_environment() -> None:
  """With `STORAGE_EMULATOR_HOST` set (a GCS emulator, e.g. http://127.0.0.1:9023), sets
  what the other clients need to use it too, unless already set:
  `TENSORSTORE_GCS_HTTP_URL` (tensorstore writes orbax's arrays), a dummy
  `GOOGLE_AUTH_TOKEN_FOR_TESTING` (tensorstore's credentials), and
  `GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false` (gcsfs would otherwise ask the storage-layout
  API, which an emulator lacks, and warn at every call). Without it: nothing (real GCS)."""
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if not emulator:
    return
  if "://" not in emulator:
    emulator = f"http://{emulator}"
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", emulator)
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _epath(path):
  from vdm_jax import _deps

  configure_environment()
  _deps.require("gcsfs", extra="gcs", feature=f"A gs:// path ({path})")
  from etils import epath

  return epath.Path(path)


def join(path, *parts) -> str:
  """Joins path parts: with "/" for a URL, `os.path.join` for a local path."""
  path = os.fspath(path)
  return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def dirname(path) -> str:
  """The folder (or prefix) holding `path`."""
  path = os.fspath(path)
  return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def exists(path) -> bool:
  """Whether a file, folder or object exists at `path`."""
  return _epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path) -> bool:
  """A folder; on an object store, a prefix under which some object exists."""
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path) -> bool:
  """Whether `path` is a file (or an object)."""
  return _epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def listdir(path) -> list[str]:
  """The names in a folder (or under a prefix); raises FileNotFoundError if there is none."""
  if not is_remote(path):
    return os.listdir(path)
  folder = _epath(path)
  if not folder.is_dir():
    raise FileNotFoundError(f"No such folder: {path}")
  return [p.name for p in folder.iterdir()]


def makedirs(path) -> None:
  """Creates a local folder and its parents; nothing for an object store (no folders)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def remove(path, *, missing_ok: bool = False) -> None:
  """Deletes the file or object `path`; a missing one raises unless `missing_ok`."""
  try:
    _epath(path).unlink() if is_remote(path) else os.remove(path)
  except FileNotFoundError:
    if not missing_ok:
      raise


def remove_tree(path) -> None:
  """Deletes the folder `path` and everything in it (on GCS: every object under it); a
  missing one is not an error."""
  if is_remote(path):
    _epath(path).rmtree(missing_ok=True)
  else:
    shutil.rmtree(path, ignore_errors=True)


def read_bytes(path) -> bytes:
  """The content of the file or object `path`."""
  if is_remote(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  """The content of the file or object `path`, decoded as UTF-8."""
  return read_bytes(path).decode()


def write_atomic(path, data: str | bytes) -> None:
  """Replaces the file `path` by `data` so that a reader (or a kill) sees the old content or
  the new, never part of it.

  Local: written to `<path>.tmp-<pid>`, fsynced and renamed over `path` (removed again if
  the write fails, e.g. on a full disk). GCS: one whole-object upload, which becomes visible
  only when complete (no rename: an object store has none that is atomic).
  """
  data = data.encode() if isinstance(data, str) else bytes(data)
  if is_remote(path):
    _epath(path).write_bytes(data)
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.remove(tmp)
    except OSError:
      pass
    raise


def move_tree(source: str, target: str, *, marker: str | None = None) -> None:
  """Moves the folder `source` to `target` (which must not exist).

  Local: one rename. GCS: each object is copied, then the originals are deleted, `marker`
  (a file name inside `source`, e.g. orbax's `commit_success.txt`, whose presence makes the
  folder count as complete) first, so that a move cut short leaves `source` incomplete in
  the eyes of its reader, never a mix that looks complete.
  """
  if not is_remote(source):
    os.replace(source, target)
    return
  bare = source.split("://", 1)[1]  # the walk gives folders as "bucket/path"
  relative = [
    posixpath.relpath(posixpath.join(os.fspath(folder).split("://")[-1], name), bare)
    for folder, _, names in _epath(source).walk()
    for name in names
  ]
  files = [_epath(join(source, name)) for name in relative]
  for name, p in zip(relative, files, strict=True):
    p.copy(_epath(join(target, name)))  # a copy within GCS
  files.sort(key=lambda p: p.name != marker)  # the marker goes first
  for p in files:
    p.unlink(missing_ok=True)
