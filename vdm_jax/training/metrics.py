"""Where training reports: TensorBoard, `metrics.jsonl`, stdout, and a progress bar."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import logging

from vdm_jax.runtime import workdir as workdir_lib

__all__ = ["MetricWriter", "progress_bar", "say"]


class MetricWriter:
  """Scalars to TensorBoard event files, `metrics.jsonl` and stdout; only process 0 writes.

  Both files are flushed at every write, so a kill loses nothing already logged. A resumed
  run first drops the rows logged after its checkpoint (`start_step`), which it replays:
  from `metrics.jsonl` directly, and from TensorBoard through its purge step.
  """

  def __init__(self, workdir: str, start_step: int):
    self.active = jax.process_index() == 0
    self._tb = None
    if self.active:
      self._jsonl = os.path.join(workdir, "metrics.jsonl")
      dropped = workdir_lib.drop_replayed_rows(self._jsonl, start_step)
      if dropped:
        print(f"metrics.jsonl: dropped {dropped} row(s) after step {start_step} (replayed).")
      from vdm_jax import _deps

      if _deps.available("tensorboardX"):  # the optional `tensorboard` extra
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(
          os.path.join(workdir, "tb"), purge_step=start_step + 1 if start_step else None
        )
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
    with open(self._jsonl, "a") as f:
      # Strict JSON: a non-finite value is logged as null (TensorBoard and stdout show it).
      f.write(workdir_lib.dumps_strict({"kind": kind, "step": step, **values}) + "\n")
    text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    logging.info("[%s] step %d: %s", kind, step, text)
    print(f"[{kind}] step {step}: {text}", flush=True)

  def image(self, step: int, name: str, grid: np.ndarray) -> None:
    if self._tb is not None:
      self._tb.add_image(name, grid, step, dataformats="HWC")
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


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
