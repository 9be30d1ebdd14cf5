"""Checkpoints of google-research/vdm (the VDM paper's code) as work directories of this project.

`import_checkpoint(source, workdir, config)` reads a checkpoint the reference wrote and
writes a work directory that every tool reads (`vdm-evaluate`, `vdm-sample`, `vdm-train`
to fine-tune or resume, `evaluation.load_run`). `scripts/import_vdm_checkpoint.py`
(`vdm-import-vdm-checkpoint`) is its command line; docs/reference_checkpoints.md the guide.

The reference's format (it saves with `clu.checkpoint`): a folder (the published ones are
`.../checkpoint-final/checkpoints-0`) holding the text file `checkpoint`, TensorFlow's
checkpoint state, whose `model_checkpoint_path: "ckpt-N"` names the latest checkpoint;
`ckpt-N.flax`, the train state written by `flax.serialization.to_bytes` (msgpack: a dict of
`step`, `params`, `ema_params`, `opt_state`); and TensorFlow's `ckpt-N.index` and
`ckpt-N.data-*` (the input pipeline's position, not read here). No TensorFlow is needed.

What is imported: the EMA parameters (what the reference evaluates and samples with),
written as both `params` and `ema_params` of a new train state at the reference's step,
with a fresh optimizer state of this project's optimizer (the reference's Adam moments
belong to another optimizer chain and are not carried over). The architecture is read from
the arrays' shapes (`infer_architecture`); the reference config's gamma_min and gamma_max,
which its network uses to normalise gamma and are not stored in the checkpoint, are the
config's `schedule.gamma_min` and `schedule.gamma_max`. Every array must find its place in
the model built from that config, with its shape, or nothing is written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import config as config_lib
from vdm_jax import data, models, times
from vdm_jax.runtime import checkpoints
from vdm_jax.runtime import workdir as workdir_lib
from vdm_jax.training.state import TrainState, make_optimizer, num_time_bins

__all__ = [
  "INFERRED_FIELDS",
  "find_flax_file",
  "import_checkpoint",
  "infer_architecture",
  "map_params",
  "read_state",
]

# Config fields the importer sets from the checkpoint (and from --gamma_min/--gamma_max).
INFERRED_FIELDS = (
  "model.kind",
  "model.denoiser",
  "model.prediction",
  "model.n_layer",
  "model.n_embd",
  "model.fourier_features",
  "model.attention_everywhere",
  "schedule.kind",
  "schedule.gamma_min",
  "schedule.gamma_max",
)
"""Config fields the importer sets from the checkpoint (and from --gamma_min/--gamma_max)."""

# The reference's gamma_type -> this project's schedule.kind (README of the module above).
SCHEDULE_KINDS = {
  "fixed": "linear",
  "learnable_scalar": "learned_linear",
  "learnable_nnet": "vdm_reference_nnet",
}

_CKPT_FILE = re.compile(r"ckpt-(\d+)\.flax")
_STATE_LINE = re.compile(r'^\s*model_checkpoint_path:\s*"(.*)"\s*$', re.M)


def find_flax_file(source: str) -> str:
  """The `ckpt-N.flax` file `source` names: the file itself, or the latest of a folder.

  In a folder the latest is the one its `checkpoint` state file names; without a state
  file, the highest N among the `ckpt-N.flax` files.

  Raises:
    FileNotFoundError / ValueError naming what was looked for and what is there.
  """
  path = os.path.abspath(os.path.expanduser(os.fspath(source)))
  if os.path.isfile(path):
    return path
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"No checkpoint {path!r}: give the folder the reference wrote (e.g. "
      "checkpoint-final/checkpoints-0) or one of its ckpt-N.flax files."
    )
  state_file = os.path.join(path, "checkpoint")
  if os.path.isfile(state_file):
    with open(state_file, errors="replace") as f:
      match = _STATE_LINE.search(f.read())
    if match is None:
      raise ValueError(
        f"{state_file} names no checkpoint (no model_checkpoint_path line): it is not the "
        "checkpoint state file of google-research/vdm. Name the ckpt-N.flax file instead."
      )
    name = os.path.basename(match.group(1).rstrip("/"))  # written as a path on their machine
    flax_path = os.path.join(path, name + ".flax")
    if not os.path.isfile(flax_path):
      raise FileNotFoundError(
        f"{state_file} names {name!r}, but {flax_path} does not exist (an incomplete "
        "download?). Copy that file too, or name another ckpt-N.flax file."
      )
    return flax_path
  found = sorted(
    (int(m.group(1)), name)
    for name in os.listdir(path)
    if (m := _CKPT_FILE.fullmatch(name)) is not None
  )
  if found:
    return os.path.join(path, found[-1][1])
  subfolders = sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))
  hint = f" It holds the folders {subfolders}: pass one of them." if subfolders else ""
  raise FileNotFoundError(
    f"{path} holds no google-research/vdm checkpoint (no `checkpoint` state file and no "
    f"ckpt-N.flax file).{hint}"
  )


def read_state(flax_path: str) -> dict:
  """The train state a `ckpt-N.flax` file holds, as nested dicts of numpy arrays.

  Raises:
    ValueError for a file that is not a complete msgpack train state of the reference
    (truncated, another format, or without `ema_params`), naming the file.
  """
  with open(flax_path, "rb") as f:
    raw = f.read()
  try:
    state = flax.serialization.msgpack_restore(raw)
  except Exception as e:  # msgpack raises several kinds; all mean "not a complete file"
    raise ValueError(
      f"{flax_path} cannot be read as a Flax msgpack checkpoint ({type(e).__name__}: "
      f"{checkpoints.first_line(e)}): the file is truncated (an incomplete download?) or "
      "not a checkpoint of google-research/vdm."
    ) from e
  if not isinstance(state, dict) or "ema_params" not in state:
    keys = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise ValueError(
      f"{flax_path} is a msgpack file but not a google-research/vdm train state: it has no "
      f"ema_params (its top level: {keys})."
    )
  return state


def _flat(tree) -> dict:
  return {
    "/".join(path): leaf
    for path, leaf in flax.traverse_util.flatten_dict(tree, keep_empty_nodes=False).items()
  }


def _listing(names, limit: int = 20) -> str:
  names = sorted(names)
  more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def _refuse(unmatched, missing=(), mismatched=()) -> ValueError:
  parts = []
  if unmatched:
    parts.append(f"arrays with no place in the model: {_listing(unmatched)}")
  if missing:
    parts.append(f"arrays the model needs that the checkpoint lacks: {_listing(missing)}")
  if mismatched:
    parts.append(f"arrays of another shape: {_listing(mismatched)}")
  return ValueError(
    "The checkpoint does not map onto google-research/vdm's ScoreUNet and schedules; "
    + "; ".join(parts)
    + ". Nothing was written. Only checkpoints of that code (its VDM model with gamma_type "
    "fixed, learnable_scalar or learnable_nnet) can be imported."
  )


def infer_architecture(ema_params) -> dict:
  """Config fields and data channels read from the shapes of the reference's EMA params.

  n_layer: the number of `down.block_<i>`; n_embd: `conv_in`'s output channels; the data's
  channels C: `conv_out`'s; Fourier features: `conv_in` takes 5 C channels (z and the
  sin/cos at two frequencies) instead of C; attention everywhere: `down.attn_0` exists;
  the schedule: the `gamma` params (none: fixed; `w`, `b`: learnable_scalar; `l1`, `l2`,
  `l3`: learnable_nnet).

  Returns:
    {"model.n_layer": ..., "model.n_embd": ..., "model.fourier_features": ...,
    "model.attention_everywhere": ..., "schedule.kind": ..., "gamma_type": the reference's
    name, "channels": C}.

  Raises:
    ValueError listing the arrays when the tree is not the reference's.
  """
  if not isinstance(ema_params, dict):
    raise _refuse([f"ema_params ({type(ema_params).__name__})"])
  flat = _flat(ema_params)
  score = ema_params.get("score_model")
  if not isinstance(score, dict) or not {"conv_in", "conv_out"} <= set(score):
    raise _refuse(flat)
  try:
    conv_in = np.shape(score["conv_in"]["kernel"])
    conv_out = np.shape(score["conv_out"]["kernel"])
  except (KeyError, TypeError):
    raise _refuse(flat) from None
  if len(conv_in) != 4 or len(conv_out) != 4:
    raise _refuse([], mismatched=["score_model/conv_in/kernel", "score_model/conv_out/kernel"])
  n_embd, c_in, channels = conv_in[3], conv_in[2], conv_out[3]
  if c_in not in (channels, 5 * channels):
    raise _refuse([], mismatched=["score_model/conv_in/kernel"])
  n_layer = sum(1 for name in score if re.fullmatch(r"down\.block_\d+", name))
  gamma = ema_params.get("gamma") or {}
  keys = set(gamma) if isinstance(gamma, dict) else None
  if keys == set():
    gamma_type = "fixed"
  elif keys == {"w", "b"}:
    gamma_type = "learnable_scalar"
  elif keys == {"l1", "l2", "l3"}:
    gamma_type = "learnable_nnet"
  else:
    raise _refuse([n for n in flat if n.startswith("gamma")])
  return {
    "model.n_layer": n_layer,
    "model.n_embd": int(n_embd),
    "model.fourier_features": bool(c_in == 5 * channels),
    "model.attention_everywhere": "down.attn_0" in score,
    "schedule.kind": SCHEDULE_KINDS[gamma_type],
    "gamma_type": gamma_type,
    "channels": int(channels),
  }


def map_params(ema_params, expected) -> dict:
  """The reference's EMA params as this project's `{"schedule": ..., "denoiser": ...}`.

  `score_model` is the denoiser's tree as it is; `gamma` the schedule's, with the
  learnable_scalar's `w`, `b` of shape (1,) as scalars. `expected` is the model's params
  tree of `jax.ShapeDtypeStruct`s (`jax.eval_shape(model.init, key)`): every array must
  match one of its leaves in name and shape, and every leaf must be matched.

  Raises:
    ValueError listing the unmatched, missing and mismatched arrays.
  """
  source = {}
  for name, leaf in _flat(ema_params).items():
    head, _, rest = name.partition("/")
    target = {"score_model": "denoiser", "gamma": "schedule"}.get(head)
    source[f"{target}/{rest}" if target else name] = np.asarray(leaf)
  want = _flat(expected)
  unmatched = [n for n in source if n not in want]
  missing = [n for n in want if n not in source]
  mismatched = []
  mapped = {}
  for name, spec in want.items():
    if name not in source:
      continue
    array = source[name]
    if name.startswith("schedule/") and array.shape == (1,) and spec.shape == ():
      array = array.reshape(())  # learnable_scalar's w, b
    if array.shape != spec.shape or not np.issubdtype(array.dtype, np.floating):
      mismatched.append(f"{name} {array.dtype}{list(array.shape)} (expected {list(spec.shape)})")
      continue
    mapped[tuple(name.split("/"))] = np.asarray(array, np.float32)
  if unmatched or missing or mismatched:
    raise _refuse(
      [_reference_name(n) for n in unmatched],
      [_reference_name(n) for n in missing],
      [_reference_name(n) for n in mismatched],
    )
  params = flax.traverse_util.unflatten_dict(mapped)
  return {"schedule": params.get("schedule", {}), "denoiser": params["denoiser"]}


def _reference_name(name: str) -> str:
  """An array's name in the reference's tree (score_model/..., gamma/...)."""
  head, _, rest = name.partition("/")
  return {"denoiser": "score_model", "schedule": "gamma"}.get(head, head) + "/" + rest


def _step(state, flax_path: str) -> int:
  step = np.asarray(state.get("step", 0))
  if step.size != 1 or not np.issubdtype(step.dtype, np.integer) or int(step.reshape(())) < 0:
    raise ValueError(f"{flax_path}: its step {step!r} is not a non-negative integer.")
  return int(step.reshape(()))


def _check_target(workdir: str) -> str:
  workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
  if os.path.isfile(workdir) or (os.path.isdir(workdir) and os.listdir(workdir)):
    raise ValueError(
      f"--workdir {workdir!r} already exists and is not an empty folder; the import writes a "
      "new work directory. Choose another path (or remove that one)."
    )
  parent = os.path.dirname(workdir)
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"The folder {parent!r} that would hold --workdir does not exist.")
  if not os.access(parent, os.W_OK):
    raise PermissionError(f"Cannot write in {parent!r}, where --workdir would be created.")
  return workdir


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def import_checkpoint(source: str, workdir: str, config) -> dict:
  """Writes the reference checkpoint `source` as the new work directory `workdir`.

  Args:
    source: the reference's checkpoint folder (its latest checkpoint is taken) or a
      `ckpt-N.flax` file.
    workdir: the work directory to create (absent, or an empty folder).
    config: the config to record (its data set, evaluation and training settings, and
      `schedule.gamma_min`/`gamma_max`, the reference config's); the fields of
      `INFERRED_FIELDS` except the gamma range are set from the checkpoint.

  Returns:
    a summary: {"workdir", "source", "sha256", "step", "gamma_type", "config" (the fields
    set), "num_params"}.

  Raises:
    ValueError / FileNotFoundError before anything is written: an unreadable or foreign
    file, arrays that do not map, a config that does not fit (e.g. data of other channels).
  """
  workdir = _check_target(workdir)
  flax_path = find_flax_file(source)
  state = read_state(flax_path)
  step = _step(state, flax_path)
  ema = state["ema_params"]
  arch = infer_architecture(ema)

  config = config.copy_and_resolve_references()
  config.model.kind, config.model.denoiser, config.model.prediction = "vdm", "vdm_reference", "eps"
  for field in (
    "model.n_layer",
    "model.n_embd",
    "model.fourier_features",
    "model.attention_everywhere",
    "schedule.kind",
  ):
    group, name = field.split(".")
    config[group][name] = arch[field]
  config_lib.validate(config)
  info = data.static_info(config.data)
  if info.shape[-1] != arch["channels"]:
    raise ValueError(
      f"The checkpoint's network takes {arch['channels']} channels but "
      f"config.data.name={config.data.name!r} has {info.shape[-1]} ({info.shape}); choose "
      "the data set it was trained on with --config.data.name."
    )
  model = models.make_model(config, info)
  params = map_params(ema, jax.eval_shape(model.init, jax.random.key(0)))
  bad = checkpoints.non_finite_fields({"ema_params": params})
  if bad:
    raise ValueError(f"{flax_path}: its EMA parameters hold NaN or infinite values.")

  importance = config.loss.time_sampling == "importance"
  params = jax.tree.map(jnp.asarray, params)
  train_state = TrainState.create(
    apply_fn=None,
    params=params,
    tx=make_optimizer(config),
    ema_params=jax.tree.map(jnp.copy, params),
    time_moments=times.init_time_moments(num_time_bins(model, config)) if importance else None,
  ).replace(step=jnp.asarray(step, jnp.int32))
  summary = {
    "workdir": workdir,
    "source": flax_path,
    "sha256": _sha256(flax_path),
    "step": step,
    "gamma_type": arch["gamma_type"],
    "config": {f: config[f.split(".")[0]][f.split(".")[1]] for f in INFERRED_FIELDS},
    "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
  }

  parent, base = os.path.split(workdir)
  tmp = tempfile.mkdtemp(prefix=f".{base}.importing-", dir=parent)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    manager = checkpoints.make_checkpoint_manager(tmp, max_to_keep=config.train.max_to_keep)
    try:
      checkpoints.save_checkpoint(manager, step, train_state, force=True)
      manager.wait_until_finished()
    finally:
      manager.close()
    workdir_lib.record_config(config, tmp, step)
    record = {k: v for k, v in summary.items() if k != "workdir"}
    workdir_lib.write_json_atomic(
      os.path.join(tmp, "imported_from.json"), workdir_lib.dumps_strict(record, indent=2)
    )
    if os.path.isdir(workdir):
      os.rmdir(workdir)  # empty (checked above)
    os.rename(tmp, workdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return summary


def describe(summary: dict) -> str:
  """The importer's report: what was read, what was written, and the next commands."""
  c = summary["config"]
  w = summary["workdir"]
  return (
    f"Imported {summary['source']} (step {summary['step']}, sha256 {summary['sha256'][:16]}...)\n"
    f"  schedule: {summary['gamma_type']} -> schedule.kind={c['schedule.kind']!r}, "
    f"gamma_min={c['schedule.gamma_min']}, gamma_max={c['schedule.gamma_max']}\n"
    f"  ScoreUNet: n_layer={c['model.n_layer']}, n_embd={c['model.n_embd']}, fourier_features="
    f"{c['model.fourier_features']}, attention_everywhere={c['model.attention_everywhere']}; "
    f"{summary['num_params']:,} parameters (the EMA ones)\n"
    f"  written to {w}\n"
    f"Evaluate:  vdm-evaluate --workdir={w}\n"
    f"Sample:    vdm-sample --workdir={w} --num_samples=16"
  )
