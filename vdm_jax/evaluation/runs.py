"""A trained run, loaded from its work directory alone: `load_run(workdir) -> Run`.

The work directory is the source of truth. Its `config.json` records the config the
checkpoints were made with (and the plugin modules they need, `config.imports`), so

  >>> run = load_run("runs/digits")                                    # doctest: +SKIP
  >>> run.model, run.params, run.config, run.step                     # doctest: +SKIP

is all it takes to evaluate or sample a run in your own code. A config passed in as well
(a file, overrides) is checked against the record field by field: it may differ only in
what does not change the trained model (`INFERENCE_SAFE`: evaluation options, training-only
settings, where the data live, the compute dtype, and the dataset itself when its shape and
vocabulary match, e.g. for out-of-distribution likelihoods); anything else is refused
before any work, naming each field with its recorded and given values.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from vdm_jax import config as config_lib
from vdm_jax import data
from vdm_jax.runtime import distributed, inference, storage
from vdm_jax.runtime import workdir as workdir_lib

__all__ = ["INFERENCE_SAFE", "Run", "check_against_record", "load_run"]

INFERENCE_SAFE = (
  "train.",
  "optim.",
  "eval.",
  "seed",
  "distributed",
  "imports",
  "data.data_dir",
  "data.num_workers",
  "model.dtype",  # compute dtype: bfloat16 moves the number slightly; the JSON records it
  "loss.antithetic",
  "loss.vae_num_samples",  # draws of z in the VAE's reconstruction estimate: same bound
  "loss.time_sampling",
  "loss.time_bins",
  "loss.time_decay",
)
"""Config fields (or prefixes ending in ".") that evaluation or sampling may change
against the run's record: none changes what the checkpoint's parameters mean."""


@dataclasses.dataclass(frozen=True)
class Run:
  """A checkpoint of a training run, ready for inference.

  Attributes:
    model: the model (`models.Model`; `model.diffusion_time` tells a VDM from a VAE).
    params: the EMA parameters of `step`, replicated over this process's devices.
    config: the config used (the record, or the given config once checked against it).
    step: the checkpoint's step.
    mesh: the device mesh the parameters live on.
    workdir: the absolute work directory.
    changes: {field: (recorded, given)} of the accepted differences from the record.
  """

  model: object
  params: object
  config: object
  step: int
  mesh: object
  workdir: str
  changes: dict = dataclasses.field(default_factory=dict)


def _safe(field: str) -> bool:
  return any(field == s or (s.endswith(".") and field.startswith(s)) for s in INFERENCE_SAFE)


def check_against_record(record, config, workdir: str) -> dict:
  """{field: (recorded, given)} of the differences between `config` and the run's record.

  Raises:
    ValueError: listing every difference that changes what the checkpoint means (model,
      schedule, the loss's T, a dataset of another shape or vocabulary), with both values.
  """
  changes = workdir_lib.changed_fields(
    workdir_lib.config_as_dict(record), workdir_lib.config_as_dict(config)
  )
  refused = {field: v for field, v in changes.items() if not _safe(field)}
  if "data.name" in refused:
    try:
      old, new = data.static_info(record.data), data.static_info(config.data)
    except ValueError:
      old = new = None  # an unknown dataset: validate() says so
    if old is not None and (old.shape, old.vocab_size) == (new.shape, new.vocab_size):
      del refused["data.name"]
    elif old is not None:
      a, b = refused["data.name"]
      refused["data.name"] = (
        f"{a} ({'x'.join(map(str, old.shape))}, V={old.vocab_size})",
        f"{b} ({'x'.join(map(str, new.shape))}, V={new.vocab_size})",
      )
  if refused:
    lines = "\n".join(
      f"  config.{field}: recorded {a!r}, given {b!r}" for field, (a, b) in refused.items()
    )
    hint = ""
    if "loss.num_steps" in refused:
      hint = " To evaluate at another T, keep the config and pass --num_steps=T."
    raise ValueError(
      f"The config differs from the one {workdir} was trained with "
      f"({storage.join(workdir, 'config.json')}) in fields that change what its "
      f"checkpoints mean:\n{lines}\nLeave out --config (and these overrides): the run's "
      "recorded config is used. Evaluation options (eval.*), data.data_dir, model.dtype and "
      f"a dataset of the same shape and vocabulary may differ.{hint}"
    )
  return changes


def _check_workdir(workdir) -> str:
  if not isinstance(workdir, str | os.PathLike) or not os.fspath(workdir):
    raise ValueError(f"A work directory path is needed, got {workdir!r}.")
  workdir = storage.resolve(workdir)
  if not storage.exists(workdir):
    raise FileNotFoundError(f"No work directory {workdir!r}: check the --workdir path.")
  if not storage.isdir(workdir):
    raise ValueError(f"--workdir {workdir!r} is a file; a run's work directory is a folder.")
  return workdir


def load_run(workdir, *, step: int | None = None, config=None, prepare_data: bool = True) -> Run:
  """Loads the EMA parameters of a run's checkpoint, with the model and the config.

  Args:
    workdir: the training run's work directory.
    step: the checkpoint (default: the latest).
    config: None to use the run's recorded config (`<workdir>/config.json`); else a config
      to use instead, checked against the record (`check_against_record`). A run without a
      record (its config.json deleted) needs `config`, used unchecked, with a warning.
    prepare_data: build the offline datasets (digits, photos) under `data.data_dir` if
      they are missing there (every process), so a copied run evaluates on a new machine.

  Returns:
    a `Run`.

  Raises:
    FileNotFoundError: no such work directory, no record and no config, no checkpoint.
    ValueError: a file for a work directory, no such step, a refused config.
    vdm_jax.runtime.checkpoints.CheckpointError: a damaged checkpoint.
  """
  workdir = _check_workdir(workdir)
  record_path = storage.join(workdir, "config.json")
  record = None
  if storage.exists(record_path):
    record = workdir_lib.read_config_record(record_path)
    config_lib.import_plugins(record)
  elif config is None:
    raise FileNotFoundError(
      f"{workdir} has no config.json, so it is not a training run's work directory (or its "
      "record was deleted). Pass the config it was trained with: --config=<name or file>."
    )
  changes = {}
  if config is None:
    config = record
  elif record is not None:
    config_lib.import_plugins(config)
    changes = check_against_record(record, config, workdir)
  else:
    print(
      f"warning: {workdir} has no config.json; the given config cannot be checked against "
      "the one the checkpoints were trained with.",
      file=sys.stderr,
    )
  config_lib.validate(config)
  if prepare_data:
    distributed.prepare_data(config.data)
  model, mesh, params, step = inference.load_ema_params(config, workdir, step=step)
  return Run(model, params, config, int(step), mesh, workdir, changes)
