"""Shared test helpers (importable from tests: pytest puts this folder on sys.path)."""

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from vdm_jax.config import base_config


def tiny_config(data_dir, **train_overrides):
  """A digits config small enough to train a few steps in seconds on CPU."""
  c = base_config()
  c.data.data_dir = str(data_dir)
  c.model.n_layer, c.model.n_embd, c.model.norm_groups = 1, 16, 8
  c.model.dropout = 0.1
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 5
  c.train.batch_size = 32
  c.train.num_steps = 6
  c.train.log_every = 3
  c.train.ckpt_every = 3
  c.train.eval_every = 1000
  c.train.num_samples = 0
  c.eval.batch_size = 256
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


REPO = pathlib.Path(__file__).parents[1]
TINY_MODEL_FLAGS = (
  "--config.model.n_layer=1",
  "--config.model.n_embd=16",
  "--config.model.norm_groups=8",
)


def script_command(script: str, *args, config: str = "digits.py", tiny: bool = False) -> list:
  """The command line `python scripts/<script> --config=configs/<config> *args`, then the
  tiny model of `tiny_config` when `tiny`."""
  command = [
    sys.executable,
    str(REPO / "scripts" / script),
    f"--config={REPO / 'configs' / config}",
  ]
  return command + [str(a) for a in args] + (list(TINY_MODEL_FLAGS) if tiny else [])


def train_command(workdir, data_dir, *args) -> list:
  """`scripts/train.py` of the tiny digits model in `workdir` on the data in `data_dir`,
  with no checkpoint, evaluation or samples on the way unless `args` ask for them."""
  return script_command(
    "train.py",
    f"--workdir={workdir}",
    f"--config.data.data_dir={data_dir}",
    "--config.train.batch_size=32",
    "--config.train.ckpt_every=1000",
    "--config.train.eval_every=1000",
    "--config.train.num_samples=0",
    *args,
    tiny=True,
  )


def run_script(script: str, *args, config: str = "digits.py", tiny: bool = False, env=None):
  """Runs `script_command(script, *args, config=config, tiny=tiny)` and returns the
  completed process (text output captured)."""
  command = script_command(script, *args, config=config, tiny=tiny)
  return subprocess.run(command, capture_output=True, text=True, env=env)


def restore_state(workdir, step: int) -> dict:
  """The saved train-state fields of checkpoint `step` of `workdir`, as saved (no target)."""
  import orbax.checkpoint as ocp

  with ocp.CheckpointManager(pathlib.Path(workdir) / "checkpoints") as manager:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
  return restored["state"]


def devices_flags(count: int) -> str:
  """XLA_FLAGS for a subprocess with `count` fake CPU devices, keeping the suite's flags."""
  import os

  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"


@contextlib.contextmanager
def gcs_emulator(bucket: str = "test", log_path=None):
  """A GCS emulator (gcp-storage-emulator, in memory, with the additions of
  tests/gcs_emulator.py: generation headers and preconditions) on a free port of 127.0.0.1
  (loopback only) with the bucket `bucket`; yields the environment variables that point
  vdm_jax at it (gcsfs, google-cloud-storage and tensorstore). Stopped by its own pid."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  log = open(log_path or os.devnull, "w")  # noqa: SIM115 (closed below)
  proc = subprocess.Popen(
    [sys.executable, str(REPO / "tests" / "gcs_emulator.py"), str(port), bucket],
    stdout=log,
    stderr=subprocess.STDOUT,
    stdin=subprocess.DEVNULL,
  )
  url = f"http://127.0.0.1:{port}"
  try:
    deadline = time.monotonic() + 60
    while True:
      try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
          break
      except OSError:
        if proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"the GCS emulator did not start on {url}") from None
        time.sleep(0.1)
    yield {
      "STORAGE_EMULATOR_HOST": url,
      "TENSORSTORE_GCS_HTTP_URL": url,
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
  finally:
    if proc.poll() is None:
      os.kill(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@contextlib.contextmanager
def full_disk_at_commit(monkeypatch, step: int):
  """Orbax's commit of checkpoint `step` (its background thread) fails as on a full disk,
  for the block; yields the list of absl log records written meanwhile (to check that no
  orbax traceback was logged)."""
  from absl import logging as absl_logging
  from orbax.checkpoint._src.path import atomicity

  commit = atomicity.AtomicRenameTemporaryPath.finalize

  async def full_disk(self):
    if os.path.basename(str(self.get_final())) == str(step):
      raise OSError(28, "No space left on device")
    return await commit(self)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full_disk)
  records = []
  handler = absl_logging.ABSLHandler(absl_logging.PythonFormatter())
  handler.emit = records.append
  absl_logging.get_absl_logger().addHandler(handler)
  try:
    yield records
  finally:
    absl_logging.get_absl_logger().removeHandler(handler)
