"""Where training reports: TensorBoard, `metrics.jsonl`, stdout, and a progress bar."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import logging

from vdm_jax.runtime import storage
from vdm_jax.runtime import workdir as workdir_lib

__all__ = ["MetricWriter", "progress_bar", "say"]


class MetricWriter:
  """Scalars to TensorBoard event files, `metrics.jsonl` and stdout; only process 0 writes.

  Both files are flushed at every write, so a kill loses nothing already logged. A resumed
  run first drops the rows logged after its checkpoint (`start_step`), which it replays:
  from `metrics.jsonl` directly, and from TensorBoard through its purge step.

  In a `gs://` work directory (objects cannot be appended to) `metrics.jsonl` is rewritten
  whole at every write (`storage.write_atomic`: a reader sees all rows up to the last write,
  never a cut row), and the TensorBoard event file is written to a local temporary folder
  and uploaded whole to `<workdir>/tb/` at every flush (TensorBoard reads `gs://` logdirs).
  """

  def __init__(self, workdir: str, start_step: int):
    self.active = jax.process_index() == 0
    self._tb = None
    self._rows = None  # on an object store: the rows, rewritten whole at every write
    self._tb_sync = None  # on an object store: (local folder, remote folder, {name: size})
    if self.active:
      self._jsonl = storage.join(workdir, "metrics.jsonl")
      dropped = workdir_lib.drop_replayed_rows(self._jsonl, start_step)
      if dropped:
        print(f"metrics.jsonl: dropped {dropped} row(s) after step {start_step} (replayed).")
      if storage.is_remote(workdir):
        self._rows = workdir_lib.read_rows(self._jsonl)
      from vdm_jax import _deps

      if _deps.available("tensorboardX"):  # the optional `tensorboard` extra
        from tensorboardX import SummaryWriter

        logdir = storage.join(workdir, "tb")
        if storage.is_remote(workdir):  # written locally, uploaded whole at every flush
          import tempfile

          self._tb_sync = (tempfile.mkdtemp(prefix="vdm_jax_tb_"), logdir, {})
          logdir = self._tb_sync[0]
        self._tb = SummaryWriter(logdir, purge_step=start_step + 1 if start_step else None)
      else:
        logging.warning(
          "tensorboardX is not installed: metrics go to metrics.jsonl and stdout only "
          "(pip install 'vdm_jax[tensorboard]' for TensorBoard event files)."
        )

  def scalars(self, step: int, values: dict, kind: str) -> None:
    if not self.active:
      return
    values = {k: float(v) for k, v in values.items()}
    for k, v in values.items():
      if self._tb is not None:
        self._tb.add_scalar(f"{kind}/{k}", v, step)
    if self._tb is not None:
      self._tb.flush()
      self._upload_tb()
    # Strict JSON: a non-finite value is logged as null (TensorBoard and stdout show it).
    row = workdir_lib.dumps_strict({"kind": kind, "step": step, **values}) + "\n"
    if self._rows is not None:
      self._rows.append(row)
      storage.write_atomic(self._jsonl, "".join(self._rows))
    else:
      with open(self._jsonl, "a") as f:
        f.write(row)
    text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    logging.info("[%s] step %d: %s", kind, step, text)
    print(f"[{kind}] step {step}: {text}", flush=True)

  def image(self, step: int, name: str, grid: np.ndarray) -> None:
    if self._tb is not None:
      self._tb.add_image(name, grid, step, dataformats="HWC")
      self._tb.flush()
      self._upload_tb()

  def _upload_tb(self) -> None:
    """Uploads the local event files that grew since their last upload (object stores)."""
    if self._tb_sync is None:
      return
    local, remote, sizes = self._tb_sync
    for name in os.listdir(local):
      path = os.path.join(local, name)
      size = os.path.getsize(path)
      if os.path.isfile(path) and sizes.get(name) != size:
        with open(path, "rb") as f:
          storage.write_atomic(storage.join(remote, name), f.read())
        sizes[name] = size

  def close(self):
    if self._tb is not None:
      self._tb.close()
      self._upload_tb()
    if self._tb_sync is not None:
      import shutil

      shutil.rmtree(self._tb_sync[0], ignore_errors=True)
      self._tb_sync = None


def say(message: str) -> None:
  """Progress messages: printed by process 0 only (warnings and errors by every process)."""
  if jax.process_index() == 0:
    print(message, flush=True)


def progress_bar(total: int, initial: int):
  """A tqdm bar of the training steps, shown on process 0 when stderr is a terminal."""
  from tqdm import tqdm

  return tqdm(
    total=total,
    initial=initial,
    disable=not sys.stderr.isatty() or jax.process_index() != 0,
    dynamic_ncols=True,
  )
