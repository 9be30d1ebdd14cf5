"""Two processes on loopback (jax.distributed, gloo collectives), launched through the CLI
flags: training and evaluation equal one process's, a checkpoint written by two processes
resumes on one, and a SIGTERM to one process stops both at the same step, saved."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import devices_flags, tiny_config

from vdm_jax import evaluation
from vdm_jax.runtime import inference

REPO = pathlib.Path(__file__).parents[1]
pytestmark = pytest.mark.multiprocess  # run in CI too; `-m "not multiprocess"` skips them


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _finish(procs, timeout=300):
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout))
  finally:
    for p in procs:
      p.kill()
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


def _first_ends(procs, timeout=60):
  """(return code, stderr, seconds from now) of procs[0]; then every process is killed."""
  start = time.monotonic()
  try:
    rc, _, err = _finish(procs[:1], timeout=timeout)[0]
  finally:
    _kill_all(procs)
  return rc, err, time.monotonic() - start


def _kill_all(procs):
  for p in procs:
    p.kill()
    p.wait()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.mark.slow  # two processes train, then stop: minutes under load
def test_sigterm_to_one_process_stops_both_at_the_same_step(data_dir, tmp_path):
  run = tmp_path / "run"
  port = _free_port()
  procs = [_train_cli(run, data_dir, 400, process=(port, i)) for i in range(2)]
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


def _train_cli(workdir, data_dir, num_steps, *, process=None, devices=1, num_processes=2, extra=()):
  """`scripts/train.py` on the tiny digits model; `process` = (port, index) of
  `num_processes`; `extra`: more flags."""
  launch = list(extra)
  if process is not None:
    port, index = process
    launch += [
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={index}",
    ]
  env = dict(os.environ, XLA_FLAGS=devices_flags(devices))
  return subprocess.Popen(
    [
      sys.executable,
      str(REPO / "scripts" / "train.py"),
      f"--config={REPO / 'configs' / 'digits.py'}",
      f"--workdir={workdir}",
      *launch,
      *TINY_FLAGS,
      f"--config.data.data_dir={data_dir}",
      f"--config.train.num_steps={num_steps}",
    ],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
  )


TINY_FLAGS = [
  "--config.model.n_layer=1",
  "--config.model.n_embd=16",
  "--config.model.norm_groups=8",
  "--config.train.batch_size=32",
  "--config.train.ckpt_every=5",
  "--config.train.log_every=1",
  "--config.train.eval_every=1000",
  "--config.train.num_samples=0",
]


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_on_one(data_dir, tmp_path):
  num_steps = 20
  reference = _train_cli(tmp_path / "one", data_dir, num_steps, devices=2)  # 1 process x 2
  rc, _, err = _finish([reference])[0]
  assert rc == 0, err[-3000:]
  port = _free_port()
  two = [_train_cli(tmp_path / "two", data_dir, num_steps, process=(port, i)) for i in range(2)]
  for rc, _, err in _finish(two):
    assert rc == 0, err[-3000:]
  # The CRC32 of every array of the final state (params, Adam moments, EMA, step),
  # recorded at save time: equal means bit-identical.
  expected = json.loads((tmp_path / "one" / "checksums" / f"{num_steps}.json").read_text())
  assert len(expected) > 20
  assert json.loads((tmp_path / "two" / "checksums" / f"{num_steps}.json").read_text()) == expected
  # Their final evaluations (same params, same seed) agree: 2 processes x 1 device vs 1 x 2.
  final = {
    run: json.loads((tmp_path / run / "final_metrics.json").read_text())["eval"]
    for run in ("one", "two")
  }
  np.testing.assert_allclose(final["two"]["bpd"], final["one"]["bpd"], rtol=1e-5)
  np.testing.assert_allclose(final["two"]["bpd_se"], final["one"]["bpd_se"], rtol=1e-5)

  # Two processes killed mid-run; one process (2 devices) resumes their checkpoint.
  port = _free_port()
  killed = [_train_cli(tmp_path / "cut", data_dir, num_steps, process=(port, i)) for i in range(2)]
  try:
    for line in killed[0].stdout:
      if line.startswith("[train] step 12:"):
        break
  finally:
    for p in killed:
      p.kill()
      p.wait()
  resumed = _train_cli(tmp_path / "cut", data_dir, num_steps, devices=2)
  rc, out, err = _finish([resumed])[0]
  assert rc == 0, err[-3000:]
  assert "Resumed from" in out and "on 1 process(es)" in out
  assert json.loads((tmp_path / "cut" / "checksums" / f"{num_steps}.json").read_text()) == expected
  # And the 2-process checkpoint evaluates on one process with one device, to the same bpd.
  config = tiny_config(data_dir)
  vdm, mesh, params, step = inference.load_ema_params(config, str(tmp_path / "two"))
  assert step == num_steps and mesh.size == 1
  result = evaluation.evaluate(vdm, params, config, mesh, key=jax.random.key(config.seed + 1))
  np.testing.assert_allclose(result["bpd"], final["two"]["bpd"], rtol=1e-5)


# --- Launch mistakes and lost peers: an error with a message, never a hang ------------


def _errors(results):
  return [err.strip().splitlines()[-1] if err.strip() else "" for _, _, err in results]


def _assert_refused(results, message):
  for rc, _, err in results:
    assert rc == 1, err[-3000:]
    assert message in err, err[-3000:]
    assert "Traceback" not in err and "Check failure" not in err, err[-3000:]


def test_mismatched_num_processes_refused_by_every_process(data_dir, tmp_path):
  port = _free_port()
  procs = [
    _train_cli(tmp_path / "run", data_dir, 20, process=(port, i), num_processes=2 + i)
    for i in range(2)
  ]
  results = _finish(procs, timeout=60)
  _assert_refused(results, "process 1 has --num_processes=3, process 0 has 2.")
  assert not (tmp_path / "run").exists()  # refused before anything was written


def test_mismatched_workdir_refused_by_every_process(data_dir, tmp_path):
  port = _free_port()
  procs = [_train_cli(tmp_path / f"run{i}", data_dir, 20, process=(port, i)) for i in range(2)]
  results = _finish(procs, timeout=60)
  _assert_refused(
    results, f"process 1 has --workdir={tmp_path / 'run1'}, process 0 has {tmp_path / 'run0'}."
  )


def test_different_configs_refused_naming_the_field(data_dir, tmp_path):
  port = _free_port()
  procs = [_train_cli(tmp_path / "run", data_dir, 20 + i, process=(port, i)) for i in range(2)]
  results = _finish(procs, timeout=60)
  _assert_refused(results, "process 1 has a different config (hash ")
  assert "train.num_steps=21 vs 20" in results[0][2]


@pytest.mark.slow  # waits for a rendezvous to time out
def test_duplicate_process_id_refused(data_dir, tmp_path):
  port = _free_port()
  twins = [_train_cli(tmp_path / "run", data_dir, 20, process=(port, 1)) for _ in range(2)]
  time.sleep(4)  # both wait for process 0 (retrying), which then starts
  first = _train_cli(tmp_path / "run", data_dir, 20, process=(port, 0))
  results = _finish([first, *twins], timeout=60)
  _assert_refused(results, "two processes have --process_id=1 (")


def test_unreachable_coordinator_and_missing_peer_time_out(data_dir, tmp_path):
  start = time.monotonic()
  lonely = _train_cli(
    tmp_path / "run",
    data_dir,
    20,
    extra=[
      "--distributed_timeout=3",
      "--coordinator_address=notahost.invalid:12355",
      "--num_processes=2",
      "--process_id=1",
    ],
  )
  alone = _train_cli(
    tmp_path / "run", data_dir, 20, process=(_free_port(), 0), extra=["--distributed_timeout=3"]
  )
  (rc, _, err), (rc0, _, err0) = _finish([lonely, alone], timeout=60)
  assert time.monotonic() - start < 50
  assert (
    rc == 1 and "could not reach the coordinator at notahost.invalid:12355 within 3 s" in err
  ), err
  assert "is process 0 running? the same --coordinator_address on every process?" in err
  assert rc0 == 1 and "only 1 of 2 processes joined within 3 s (missing: --process_id=1)" in err0, (
    err0
  )
  assert "Traceback" not in err + err0


@pytest.mark.slow
def test_killed_peer_ends_the_survivor_with_a_message(data_dir, tmp_path):
  port = _free_port()
  procs = [_train_cli(tmp_path / "run", data_dir, 400, process=(port, i)) for i in range(2)]
  try:
    for _ in procs[0].stdout:
      if (tmp_path / "run" / "checkpoints" / "5").is_dir():  # committed (ckpt_every=5)
        break
    procs[1].kill()
  except BaseException:
    _kill_all(procs)
    raise
  rc, err, took = _first_ends(procs)
  assert rc == 1, err[-3000:]
  assert "[process 0] error: lost contact with another process (" in err, err[-3000:]
  assert re.search(
    rf"The latest checkpoint on disk is step \d*[05] \({re.escape(str(tmp_path))}/run/checkpoints\); "
    "rerun all 2 processes with the same command to resume from it.",
    err,
  ), err[-3000:]
  assert "Check failure" not in err and "Traceback" not in err, err[-3000:]
  assert took < 30, took


def _work_pid(proc) -> int:
  """The work process of a launched process (its supervising parent's only child)."""
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline:
    children = pathlib.Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    if children:
      return int(children[0])
    time.sleep(0.1)
  raise AssertionError(f"process {proc.pid} started no work process")


@pytest.mark.slow
def test_killed_process_0_ends_the_survivor_with_one_line(data_dir, tmp_path):
  """Process 0 hosts JAX's coordination service: when it dies, the survivor's runtime may
  abort in C++ (a FATAL line, a stack dump, SIGABRT) before Python sees the lost peer. The
  supervising parent turns either ending into one line of the project and exit status 1."""
  port = _free_port()
  procs = [_train_cli(tmp_path / "run", data_dir, 400, process=(port, i)) for i in range(2)]
  try:
    for _ in procs[0].stdout:
      if (tmp_path / "run" / "checkpoints" / "5").is_dir():
        break
    work = _work_pid(procs[0])
    procs[0].kill()  # the launched process 0; its work process dies with it
    killed = time.monotonic()
    rc, _, err = _finish(procs[1:], timeout=60)[0]
    took = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
      p.wait()
  assert rc == 1, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("[process 1] error: "), err[-3000:]
  assert "lost contact with another process (" in last or "JAX's runtime aborted" in last, last
  assert "rerun all 2 processes with the same command" in last, last
  for raw in ("Check failure", "Terminating process because", "Traceback", "\nF1", "*** SIG"):
    assert raw not in "\n" + err, err[-3000:]
  assert took < 30, took
  assert not pathlib.Path(f"/proc/{work}").exists() or "zombie" in _state(work)


def _state(pid: int) -> str:
  try:
    return pathlib.Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
  except (FileNotFoundError, IndexError):
    return "zombie (gone)"


@pytest.mark.slow
def test_sigterm_ends_a_process_blocked_by_a_stopped_peer(data_dir, tmp_path):
  port = _free_port()
  procs = [
    _train_cli(
      tmp_path / "run", data_dir, 400, process=(port, i), extra=["--distributed_timeout=8"]
    )
    for i in range(2)
  ]
  try:
    for line in procs[0].stdout:
      if line.startswith("[train] step 3:"):
        break
    os.kill(_work_pid(procs[1]), signal.SIGSTOP)  # process 0 now waits in its next collective
    time.sleep(2)
    procs[0].send_signal(signal.SIGTERM)
  except BaseException:
    _kill_all(procs)
    raise
  rc, err, took = _first_ends(procs)
  assert rc == 128 + signal.SIGTERM, err[-3000:]
  assert "[process 0] error: still running 8 s after SIGTERM: blocked waiting for another" in err
  assert 8 <= took < 25, took
