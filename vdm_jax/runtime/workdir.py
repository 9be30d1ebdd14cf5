"""The work directory of a training run: one run at a time, and a record of its configs.

* `RunLock`: an exclusive `fcntl.flock` on `<workdir>/.lock`, holding the pid and host of
  its owner. The kernel releases it when the owner dies (even by `kill -9`), so a stale
  lock needs no clean-up: the next run takes it over. A second run while the first is
  alive is refused at once, naming the owner.
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
from typing import Any

import ml_collections
import numpy as np

__all__ = [
  "FORMAT_KEY",
  "FORMAT_VERSION",
  "RESUME_SAFE",
  "FormatVersionError",
  "RunLock",
  "WorkdirLockedError",
  "changed_fields",
  "check_resume_config",
  "config_as_dict",
  "drop_replayed_rows",
  "dumps_strict",
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


class WorkdirLockedError(RuntimeError):
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
      raise WorkdirLockedError(
        f"Work directory {os.path.dirname(self.path)!r} is in use by a running training "
        f"({owner}). Wait for it to finish or stop it (its checkpoints resume), or use "
        "another --workdir."
      ) from None
    # A lock left by a killed run was released by the kernel with its process: take it.
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}".encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


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
  path = os.path.join(workdir, "config.json")
  if latest_step is None or not os.path.exists(path):
    return {}
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
  """Writes `text` to `path` through a temporary file and a rename: a reader sees the old
  file or the new one, never a part."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def record_config(config, workdir: str, step: int) -> str:
  """Writes `config.json` and `config_history/config.step<step>[.<n>].json`; returns the latter.

  The JSON is the config's fields and `"_format_version": FORMAT_VERSION`.
  """
  text = dumps_strict({FORMAT_KEY: FORMAT_VERSION} | config_as_dict(config), indent=2)
  history = os.path.join(workdir, "config_history")
  os.makedirs(history, exist_ok=True)
  path, n = os.path.join(history, f"config.step{step}.json"), 1
  while os.path.exists(path):
    path, n = os.path.join(history, f"config.step{step}.{n}.json"), n + 1
  write_json_atomic(path, text)
  write_json_atomic(os.path.join(workdir, "config.json"), text)
  return path


def drop_replayed_rows(path: str, step: int) -> int:
  """Removes the rows of `metrics.jsonl` logged after `step` (steps a resumed run replays).

  Returns the number of rows removed. The file is rewritten atomically.
  """
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
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

  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    path = os.path.join(path, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"No run record {path!r}: a training run's work directory holds the config.json "
      "it was trained with. Check the path, or pass the training config with --config."
    )
  try:
    with open(path) as f:
      values = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(
      f"The run record {path} cannot be read ({type(e).__name__}: {e}). Copies of it are "
      f"in {os.path.join(os.path.dirname(path), 'config_history')}/ (one per start), or "
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
