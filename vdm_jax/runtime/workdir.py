"""The work directory of a training run: one run at a time, and a record of its configs.

* `lock(workdir)`: one training run at a time. A local work directory gets `RunLock`, an
  exclusive `fcntl.flock` on `<workdir>/.lock`, holding the pid and host of its owner. The
  kernel releases it when the owner dies (even by `kill -9`), so a stale lock needs no
  clean-up: the next run takes it over. A `gs://` work directory gets `LeaseLock`, a lease
  object `<workdir>/.lock` (an object store has no flock) that its holder refreshes. Either
  way a second run while the first is alive is refused at once, naming the owner.
* `check_resume_config`: a resumed run must mean the same thing as the run that wrote
  the checkpoints. Fields that only steer how training continues (`RESUME_SAFE`: the
  number of steps, the learning rate, logging, evaluation and profiling settings, where the
  data live) may change; any other difference is refused with the list of differing fields,
  unless the user names them in `config.train.allow_config_changes`.
* `record_config`: `config.json` (the config the checkpoints are now being made with)
  and `config_history/config.step<N>.json`, one per (re)start at step N, written only
  after the config has been validated and the state restored. Both carry the on-disk
  format version (`FORMAT_VERSION`, key `"_format_version"`); `read_config_record` reads
  them back as a config, of this or any earlier format.
* `to_strict_json`, `dumps_strict`: every JSON file the project writes is strict JSON
  (RFC 8259), which has no NaN or Infinity: a non-finite number is written as `null`,
  meaning "not defined" (e.g. the Monte Carlo error of a single evaluation pass), so that
  any JSON parser reads the files, not only Python's lenient one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

import ml_collections
import numpy as np

from vdm_jax._errors import UserError
from vdm_jax.runtime import storage

__all__ = [
  "FORMAT_KEY",
  "FORMAT_VERSION",
  "RESUME_SAFE",
  "FormatVersionError",
  "LEASE_SECONDS",
  "LeaseLock",
  "RunLock",
  "WorkdirLockedError",
  "changed_fields",
  "check_resume_config",
  "config_as_dict",
  "drop_replayed_rows",
  "dumps_strict",
  "lock",
  "read_config_record",
  "record_config",
  "to_strict_json",
  "write_json_atomic",
]

# The version of what a run writes to disk (config.json, the checkpoints' metadata).
# 1: vdm_jax up to 373a7a5 (no version recorded); 2: the version recorded, `imports` in the
# config. A reader accepts every version up to its own; see CHANGELOG.md for each change.
FORMAT_VERSION = 2
"""The on-disk format this vdm_jax writes and the newest it reads."""
FORMAT_KEY = "_format_version"
"""The key of the format version in config.json and in each step's checksums file."""

RESUME_SAFE = frozenset(
  {
    "train.num_steps",
    "train.log_every",
    "train.eval_every",
    "train.ckpt_every",
    "train.max_to_keep",
    "train.num_samples",
    "train.sample_steps",
    "train.allow_config_changes",
    "train.sharding",
    "train.fsdp_min_size",
    "train.prefetch",
    "train.profile_steps",
    "optim.learning_rate",
    "optim.warmup_steps",
    "optim.grad_clip",
    "eval.batch_size",
    "eval.split",
    "data.data_dir",
    "data.num_workers",
    "distributed",
    "imports",
  }
)
"""Config fields a resume may change: they steer how training continues, not what the
checkpoints mean."""


class WorkdirLockedError(UserError, RuntimeError):
  """Another process holds the work directory's lock (its message names the holder)."""


class FormatVersionError(ValueError):
  """A run record or checkpoint written by a newer vdm_jax (a format this one cannot read)."""


class RunLock:
  """Exclusive lock of a work directory for the lifetime of a training run.

  Usage: `with RunLock(workdir): ...`. Raises `WorkdirLockedError` naming the process
  that holds it. Relies on `flock`, which local file systems and most network file
  systems (NFSv4, Lustre with flock enabled) honour; with several hosts only process 0
  takes it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._fd = None

  def __enter__(self) -> RunLock:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(fd, closefd=True) as f:
        owner = f.read().strip() or "another process"
      raise WorkdirLockedError(_in_use(os.path.dirname(self.path), owner)) from None
    # A lock left by a killed run was released by the kernel with its process: take it.
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}".encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def check(self) -> None:
    """Nothing to check: a flock cannot be lost while its process lives."""

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _in_use(workdir: str, owner: str) -> str:
  return (
    f"Work directory {workdir!r} is in use by a running training ({owner}). Wait for it "
    "to finish or stop it (its checkpoints resume), or use another --workdir."
  )


def lock(workdir: str, **options) -> RunLock | LeaseLock:
  """The run lock of `workdir` (resolved): `LeaseLock` on `gs://`, else `RunLock`.
  `options` go to `LeaseLock`. Use as a context manager."""
  return LeaseLock(workdir, **options) if storage.is_remote(workdir) else RunLock(workdir)


LEASE_SECONDS = 60.0
"""How long a `gs://` run lock stays valid after its holder's last heartbeat (default;
the environment variable `VDM_JAX_LEASE_SECONDS` overrides it). The holder refreshes it
every quarter of this."""


def _process_start(pid: int) -> str | None:
  """When process `pid` started (Linux: its start time in clock ticks since boot, with the
  boot id), to tell it from a later process given the same pid; None elsewhere."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      start = f.read().rsplit(")", 1)[1].split()[19]
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f"{f.read().strip()}:{start}"
  except (OSError, IndexError):
    return None


def _process_alive(pid: int, start: str | None) -> bool:
  """Whether process `pid` of this host runs, and is the one that started at `start`."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # it exists (another user's)
  except (OverflowError, ValueError):
    return False
  now = _process_start(pid)
  return start is None or now is None or now == start


def _json_object(data: bytes) -> dict:
  try:
    value = json.loads(data)
  except ValueError:
    return {}
  return value if isinstance(value, dict) else {}


class GcsObject:
  """One object of Google Cloud Storage read and written with generation preconditions
  (google-cloud-storage's `if_generation_match`), as `LeaseLock` needs them.

  Methods: `read() -> (bytes, generation) | None`; `create(data) -> generation | None`
  (None: the object exists, `ifGenerationMatch=0`); `replace(data, generation) ->
  generation | None` (None: it changed since `generation`); `delete(generation)`.
  """

  def __init__(self, url: str):
    from google.cloud import storage as gcs

    storage.configure_environment()
    bucket, _, name = url.removeprefix("gs://").partition("/")
    self._blob = gcs.Client().bucket(bucket).blob(name)
    self._bucket, self._name = bucket, name

  def read(self):
    from google.api_core import exceptions

    blob = self._blob.bucket.get_blob(self._name)
    if blob is None:
      return None
    generation = blob.generation
    try:
      return blob.download_as_bytes(if_generation_match=generation), generation
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      return None  # deleted or replaced meanwhile: the caller looks again

  def _upload(self, data: bytes, generation: int):
    from google.api_core import exceptions

    blob = self._blob.bucket.blob(self._name)
    try:
      blob.upload_from_string(data, if_generation_match=generation)
    except exceptions.PreconditionFailed:
      return None
    return blob.generation

  def create(self, data: bytes):
    return self._upload(data, 0)

  def replace(self, data: bytes, generation: int):
    return self._upload(data, generation)

  def delete(self, generation: int) -> None:
    from google.api_core import exceptions

    try:
      self._blob.bucket.blob(self._name).delete(if_generation_match=generation)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      pass


class LeaseLock:
  """The run lock of a work directory on an object store: a lease object `<workdir>/.lock`.

  The object holds its holder's host, pid (and the pid's start time), a random token and a
  heartbeat time; a thread of the holder rewrites it every `lease_seconds / 4`. Every write
  carries a generation precondition (`GcsObject`): the lock is taken by creating the object
  only if it does not exist (`ifGenerationMatch=0`), refreshed and taken over only if it is
  still the version read, so of two runs racing for it exactly one wins. A run that finds
  the lease held:

  * is refused at once ("in use by a running training (pid P on host H ...)"), the local
    lock's message, while the lease is fresh (a heartbeat within `lease_seconds / 2`);
  * takes it over at once when the holder is provably dead: same host, and its pid no
    longer runs (or is another process now), e.g. a run killed by `kill -9` and restarted;
  * waits for the lease to expire (at most `lease_seconds` after the last heartbeat) when
    the holder, on another host, missed its heartbeats (a preempted or killed host), then
    takes it over; if the holder refreshes it meanwhile, it is refused.

  Ages compare the holder's clock (its heartbeat time) with the reader's: hosts must keep
  their clocks synchronised to well within `lease_seconds` (NTP, as cloud VMs do).

  A holder that finds its lease taken over (it could not refresh it for longer than the
  lease: a stalled host) records it in `lost`; `check()` then raises, and training stops
  before its next save instead of writing beside another run.

  Args:
    workdir: the resolved work directory (`gs://bucket/path`).
    lease_seconds: default `VDM_JAX_LEASE_SECONDS` from the environment, else
      `LEASE_SECONDS` (60 s).
    store: the lease object (`GcsObject(<workdir>/.lock)` by default; tests pass a fake).
  """

  def __init__(self, workdir: str, *, lease_seconds: float | None = None, store=None):
    self.workdir = workdir
    self.path = storage.join(workdir, ".lock")
    if lease_seconds is None:
      lease_seconds = float(os.environ.get("VDM_JAX_LEASE_SECONDS") or LEASE_SECONDS)
    if not (math.isfinite(lease_seconds) and lease_seconds > 0):
      raise ValueError(
        f"VDM_JAX_LEASE_SECONDS={lease_seconds!r}: the run lock's lease needs a finite "
        "number of seconds > 0 (default 60)."
      )
    self.lease_seconds = lease_seconds
    self.interval = lease_seconds / 4
    self._store = store if store is not None else GcsObject(self.path)
    self._token = uuid.uuid4().hex
    self._generation = None
    self._stop = threading.Event()
    self._thread = None
    self.lost: str | None = None

  def _record(self) -> bytes:
    pid = os.getpid()
    record = {
      "host": socket.gethostname(),
      "pid": pid,
      "pid_start": _process_start(pid),
      "token": self._token,
      "heartbeat": time.time(),
      "lease_seconds": self.lease_seconds,
    }
    return json.dumps(record).encode()

  @staticmethod
  def _owner(record: dict) -> str:
    return f"pid {record.get('pid')} on host {record.get('host')}"

  def _dead(self, record: dict) -> bool:
    """The holder is provably gone: it ran on this host and its process does not."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
      return False
    return not _process_alive(record["pid"], record.get("pid_start"))

  def __enter__(self) -> LeaseLock:
    waited = False
    for _ in range(1000):  # each pass either ends or sees the lease change hands
      # Read first: a store that ignores preconditions (an emulator) still refuses a
      # second run that starts after the first.
      current = self._store.read()
      if current is None:
        generation = self._store.create(self._record())
        if generation is not None:
          return self._hold()
        continue  # created by another run between the two calls: look again
      data, generation = current
      record = _json_object(data)
      try:
        heartbeat = float(record["heartbeat"])
        lease = float(record.get("lease_seconds", self.lease_seconds))
      except (KeyError, TypeError, ValueError):
        heartbeat, lease = -math.inf, -math.inf
      age = time.time() - heartbeat
      if not math.isfinite(age):
        why = "it holds no valid lease record"
      elif self._dead(record):
        why = f"its holder ({self._owner(record)}) no longer runs"
      elif age > lease:
        why = f"its last heartbeat was {age:.0f} s ago, beyond its lease of {lease:.0f} s"
      elif age <= lease / 2 or waited:
        owner = f"{self._owner(record)}, last heartbeat {max(age, 0):.0f} s ago"
        raise WorkdirLockedError(_in_use(self.workdir, owner))
      else:  # missed heartbeats: wait for the lease to end, unless it is refreshed
        print(
          f"{self.path}: {self._owner(record)} missed its heartbeats ({age:.0f} s ago); "
          f"waiting up to {lease - age:.0f} s for its lease to expire.",
          file=sys.stderr,
          flush=True,
        )
        waited = self._wait_unchanged(generation, heartbeat + lease)
        continue
      taken = self._store.replace(self._record(), generation)
      if taken is not None:
        print(f"{self.path}: taking over the run lock: {why}.", file=sys.stderr, flush=True)
        return self._hold()
    raise WorkdirLockedError(_in_use(self.workdir, "the lease keeps changing hands"))

  def _wait_unchanged(self, generation, until: float) -> bool:
    """Sleeps until the wall-clock time `until` or until the lease changes; True."""
    while time.time() <= until:
      time.sleep(min(self.interval, max(until - time.time(), 0) + 0.1))
      current = self._store.read()
      if current is None or current[1] != generation:
        break
    return True

  def _hold(self) -> LeaseLock:
    current = self._store.read()  # a store without preconditions: the last writer wins
    record = _json_object(current[0]) if current else {}
    if record.get("token") != self._token:
      owner = self._owner(record) if record else "another process"
      raise WorkdirLockedError(_in_use(self.workdir, owner))
    self._generation = current[1]
    self._thread = threading.Thread(target=self._beat, name="vdm_jax-lease", daemon=True)
    self._thread.start()
    return self

  def _beat(self) -> None:
    while not self._stop.wait(self.interval):
      try:
        generation = self._store.replace(self._record(), self._generation)
      except Exception:  # a network hiccup: the next beat tries again, within the lease
        continue
      if generation is None:
        current = self._store.read()
        owner = self._owner(_json_object(current[0])) if current else "nobody"
        self.lost = (
          f"The run lock of {self.workdir} was taken over by {owner}: this run could not "
          f"refresh its lease for more than {self.lease_seconds:.0f} s. It stops to leave "
          "the work directory to the other run."
        )
        return
      self._generation = generation

  def check(self) -> None:
    """Raises `WorkdirLockedError` if the lease was lost to another run."""
    if self.lost:
      raise WorkdirLockedError(self.lost)

  def __exit__(self, *exc) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if self._generation is not None and not self.lost:
      try:
        self._store.delete(self._generation)
      except Exception:  # the lease expires by itself
        pass
    self._generation = None


def _flat(config_dict: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in config_dict.items():
    if isinstance(v, dict):
      out |= _flat(v, f"{prefix}{k}.")
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_as_dict(config) -> dict:
  """The config as plain JSON values (as `config.json` stores it)."""
  return json.loads(config.to_json_best_effort())


def changed_fields(old: dict, new: dict) -> dict:
  """{field: (old value, new value)} for the fields of both configs that differ."""
  old, new = _flat(old), _flat(new)
  return {k: (old[k], new[k]) for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}


def allowed_changes(config) -> set[str]:
  text = config.train.allow_config_changes or ""
  return {name.strip().removeprefix("config.") for name in text.split(",") if name.strip()}


def check_resume_config(config, workdir: str, latest_step: int | None) -> dict:
  """Refuses a resume whose config changes what the checkpoints mean.

  Args:
    config: the validated config of this run.
    workdir: the work directory (absolute).
    latest_step: the checkpoint that will be restored (None: nothing to resume, any
      config may start afresh).

  Returns:
    {field: (old, new)} of the accepted changes (empty when nothing changed).

  Raises:
    ValueError naming each refused field, its old and new value, and the ways out.
  """
  path = storage.join(workdir, "config.json")
  if latest_step is None:
    return {}
  if not storage.exists(path):
    copies = _history(workdir)
    way = (
      f"copy the latest record of config_history/ to it ({copies[-1]} -> {path})"
      if copies
      else f"write the config they were made with to {path} (as a run's config.json)"
    )
    raise ValueError(
      f"The checkpoints in {workdir!r} (latest step {latest_step}) have no config.json "
      f"({path}), the record of the config they were made with, so this resume cannot be "
      f"checked against it. To resume, {way}; or use a new --workdir."
    )
  changes = changed_fields(config_as_dict(read_config_record(path)), config_as_dict(config))
  refused = {k: v for k, v in changes.items() if k not in RESUME_SAFE | allowed_changes(config)}
  if refused:
    lines = "\n".join(f"  config.{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
    raise ValueError(
      f"The checkpoints in {workdir!r} (latest step {latest_step}) were made with a "
      f"different config ({path}):\n{lines}\nThese fields change what the checkpoint "
      "means, so resuming with them is refused. Use a new --workdir to train this config "
      "from scratch, or, if the change is what you want (e.g. a different dropout from "
      "here on), name the fields: --config.train.allow_config_changes="
      f"{','.join(refused)} (fields that change parameter shapes cannot be restored)."
    )
  return changes


def _history(workdir: str) -> list[str]:
  """The files of `<workdir>/config_history/`, oldest start first."""
  folder = storage.join(workdir, "config_history")
  try:
    names = storage.listdir(folder)
  except (FileNotFoundError, NotADirectoryError):
    return []
  names = [n for n in names if n.startswith("config.step") and n.endswith(".json")]
  return [storage.join(folder, n) for n in sorted(names, key=_history_order)]


def _history_order(name: str) -> tuple:
  """config.step<N>[.<n>].json -> (N, n): by step, then by restart at that step."""
  parts = name.removeprefix("config.step").removesuffix(".json").split(".")
  return tuple(int(p) if p.isdigit() else -1 for p in parts) + (0,) * (2 - len(parts))


def to_strict_json(obj: Any) -> Any:
  """`obj` with every non-finite float (NaN, +-inf) replaced by None, recursively.

  Walks dicts (keys kept), lists and tuples (both become lists); numpy and JAX scalars and
  arrays become Python numbers and (nested) lists first, so a float32 NaN is caught too.
  None stands for "not defined": strict JSON has no NaN or Infinity, and a reader of the
  files must treat `null` as a number that does not exist (e.g. `pass_se` of one pass).
  Anything else (str, int, bool, None, ...) is returned unchanged.
  """
  if isinstance(obj, dict):
    return {k: to_strict_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_strict_json(v) for v in obj]
  if isinstance(obj, (bool, int, str)) or obj is None:
    return obj
  if isinstance(obj, float):
    return float(obj) if math.isfinite(obj) else None  # float(): np.float64 too
  if isinstance(obj, np.generic) or hasattr(obj, "__array__"):  # numpy / JAX values
    return to_strict_json(np.asarray(obj).tolist())
  return obj


def dumps_strict(obj: Any, **kwargs) -> str:
  """`json.dumps` of `to_strict_json(obj)` with `allow_nan=False`: strict JSON text.

  `kwargs` go to `json.dumps` (e.g. `indent=2`). Non-finite numbers become `null`; a value
  that JSON cannot represent at all still raises TypeError, as with `json.dumps`.
  """
  return json.dumps(to_strict_json(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str, text: str) -> None:
  """Replaces the file (or object) `path` by `text` atomically (`storage.write_atomic`)."""
  storage.write_atomic(path, text)


def record_config(config, workdir: str, step: int) -> str:
  """Writes `config.json` and `config_history/config.step<step>[.<n>].json`; returns the latter.

  The JSON is the config's fields and `"_format_version": FORMAT_VERSION`.
  """
  text = dumps_strict({FORMAT_KEY: FORMAT_VERSION} | config_as_dict(config), indent=2)
  history = storage.join(workdir, "config_history")
  storage.makedirs(history)
  path, n = storage.join(history, f"config.step{step}.json"), 1
  while storage.exists(path):
    path, n = storage.join(history, f"config.step{step}.{n}.json"), n + 1
  write_json_atomic(path, text)
  write_json_atomic(storage.join(workdir, "config.json"), text)
  return path


def drop_replayed_rows(path: str, step: int) -> int:
  """Removes the rows of `metrics.jsonl` logged after `step` (steps a resumed run replays).

  Returns the number of rows removed. The file (or object) is rewritten atomically.
  """
  lines = read_rows(path)
  kept = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line)
    except (ValueError, KeyError, TypeError):
      pass  # a row cut short by a kill
  kept = [line if line.endswith("\n") else line + "\n" for line in kept]
  if len(kept) != len(lines):
    write_json_atomic(path, "".join(kept))
  return len(lines) - len(kept)


def read_rows(path: str) -> list[str]:
  """The lines of a `metrics.jsonl` file (or object), with their newlines; [] if absent."""
  try:
    text = storage.read_text(path)
  except FileNotFoundError:
    return []
  return text.splitlines(keepends=True)


def _merge(config: ml_collections.ConfigDict, values: dict, prefix: str = "") -> None:
  for key, value in values.items():
    current = config.get(key) if key in config else None
    if isinstance(value, dict) and isinstance(current, ml_collections.ConfigDict):
      _merge(current, value, f"{prefix}{key}.")
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
      config[key] = float(value)
    else:
      try:
        config[key] = value
      except TypeError as e:
        raise ValueError(f"config.{prefix}{key}={value!r} does not fit its field: {e}") from e


def read_config_record(path: str) -> ml_collections.ConfigDict:
  """The config a run recorded (`<workdir>/config.json`, or a file of `config_history/`).

  The record's fields are laid over `base_config()`, so a record written before a field
  existed gets that field's default (what the older code did); fields the record has and
  the base lacks (a plugin's) are kept.

  Raises:
    FileNotFoundError: no such file.
    ValueError: unreadable, not a JSON object, or written by a newer vdm_jax (a format
      version above `FORMAT_VERSION`), naming the file and the way out.
  """
  from vdm_jax.config import base_config  # local: config imports nothing of the runtime

  path = storage.resolve(path)
  if storage.isdir(path):
    path = storage.join(path, "config.json")
  if not storage.exists(path):
    raise FileNotFoundError(
      f"No run record {path!r}: a training run's work directory holds the config.json "
      "it was trained with. Check the path, or pass the training config with --config."
    )
  try:
    values = json.loads(storage.read_text(path))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(
      f"The run record {path} cannot be read ({type(e).__name__}: {e}). Copies of it are "
      f"in {storage.join(storage.dirname(path), 'config_history')}/ (one per start), or "
      "pass the training config with --config."
    ) from e
  if not isinstance(values, dict):
    raise ValueError(f"The run record {path} is not a JSON object of config fields.")
  version = values.pop(FORMAT_KEY, 1)
  if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
    raise FormatVersionError(
      f"{path} has format version {version!r}; this vdm_jax reads versions 1 to "
      f"{FORMAT_VERSION}: it was written by a newer vdm_jax. Upgrade vdm_jax to read it."
    )
  config = base_config()
  _merge(config, values)
  return config
