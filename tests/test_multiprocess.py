"""Two processes on loopback (jax.distributed, gloo collectives): the evaluation gives the
one-process number, and a SIGTERM to one process stops both at the same step, saved."""

import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import tiny_config

from vdm_jax import evaluation, train

REPO = pathlib.Path(__file__).parents[1]

_PROCESS = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
  coordinator_address="127.0.0.1:{port}", num_processes=2, process_id={process_id}
)
sys.path.insert(0, {tests!r})
from helpers import tiny_config
from vdm_jax import evaluation, train
config = tiny_config({data_dir!r}, num_steps={num_steps}, ckpt_every=10_000, log_every=1)
if {evaluate!r}:
  vdm, mesh, params, _ = train.load_ema_params(config, {workdir!r})
  r = evaluation.evaluate(vdm, params, config, mesh, batch_size=64, key=jax.random.key(4))
  print("RESULT", json.dumps([jax.process_count(), r["bpd"], r["bpd_se"]]), flush=True)
else:
  try:
    print("DONE", train.train_and_evaluate(config, {workdir!r})["step"], flush=True)
  except train.TrainingInterrupted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(data_dir, workdir, *, num_steps=6, evaluate=False):
  port = _free_port()
  return [
    subprocess.Popen(
      [
        sys.executable,
        "-c",
        _PROCESS.format(
          port=port,
          process_id=i,
          tests=str(REPO / "tests"),
          data_dir=str(data_dir),
          workdir=str(workdir),
          num_steps=num_steps,
          evaluate=evaluate,
        ),
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


def _finish(procs, timeout=300):
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      p.kill()
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_two_processes_evaluate_like_one(data_dir, tmp_path):
  config = tiny_config(data_dir)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  vdm, mesh, params, _ = train.load_ema_params(config, str(tmp_path / "run"))
  one = evaluation.evaluate(vdm, params, config, mesh, key=jax.random.key(4))
  for rc, out, err in _finish(_launch(data_dir, tmp_path / "run", evaluate=True)):
    assert rc == 0, err[-3000:]
    count, bpd, se = json.loads(out.split("RESULT ")[1])
    assert count == 2
    np.testing.assert_allclose([bpd, se], [one["bpd"], one["bpd_se"]], rtol=1e-5)


def test_sigterm_to_one_process_stops_both_at_the_same_step(data_dir, tmp_path):
  run = tmp_path / "run"
  procs = _launch(data_dir, run, num_steps=400)
  deadline = time.monotonic() + 180
  while time.monotonic() < deadline:  # wait until the processes are training
    line = procs[0].stdout.readline()
    if line.startswith("[train] step 3:") or not line:
      break
  procs[1].send_signal(signal.SIGTERM)  # only the second process is told
  results = _finish(procs)
  steps = set()
  for rc, _, err in results:
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    steps.add(int(err.split("Stopped by SIGTERM after step ")[1].split(";")[0]))
  (step,) = steps
  assert (run / "checkpoints" / str(step)).is_dir() and step < 400
