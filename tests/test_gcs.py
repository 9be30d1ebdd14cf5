"""Work directories on Google Cloud Storage, against a local GCS emulator on loopback.

The emulator is gcp-storage-emulator with what it lacks of GCS added (tests/gcs_emulator.py:
generation headers and `ifGenerationMatch` preconditions). The lease lock's decisions are
also tested against an in-memory store that honours preconditions (`_FakeStore`), where a
race between two runs can be staged step by step.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import REPO, devices_flags, gcs_emulator, train_command

from vdm_jax.runtime import storage, workdir


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The emulator's environment, set in this process for the module (bucket "test")."""
  log = tmp_path_factory.mktemp("gcs") / "emulator.log"
  with gcs_emulator("test", log_path=log) as env, pytest.MonkeyPatch.context() as mp:
    for key, value in env.items():
      mp.setenv(key, value)
    yield env


class _FakeStore:
  """One object with generations, honouring preconditions like GCS (`GcsObject`'s API)."""

  def __init__(self):
    self.data, self.generation, self.writes = None, 0, 0

  def read(self):
    return None if self.data is None else (self.data, self.generation)

  def _write(self, data, expected):
    current = self.generation if self.data is not None else 0
    if current != expected:
      return None
    self.writes += 1
    self.data, self.generation = data, self.generation + 1
    return self.generation

  def create(self, data):
    return self._write(data, 0)

  def replace(self, data, generation):
    return self._write(data, generation)

  def delete(self, generation):
    if self.data is not None and self.generation == generation:
      self.data = None


def _record(**fields) -> bytes:
  record = {"host": "elsewhere", "pid": 1, "heartbeat": time.time(), "lease_seconds": 60.0}
  return json.dumps(record | fields).encode()


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# --- the lease lock's decisions (in-memory store with preconditions) ---


def test_lease_refuses_a_second_run_while_fresh_with_the_local_message():
  store = _FakeStore()
  with workdir.LeaseLock("gs://b/run", store=store, lease_seconds=60):
    record = json.loads(store.data)
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(workdir.WorkdirLockedError) as e:
      workdir.LeaseLock("gs://b/run", store=store).__enter__()
    assert f"is in use by a running training (pid {os.getpid()} on host" in str(e.value)
    assert "Wait for it to finish or stop it (its checkpoints resume)" in str(e.value)
  assert store.data is None  # released


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(capsys):
  store = _FakeStore()
  store.create(_record(host=socket.gethostname(), pid=_dead_pid()))
  start = time.monotonic()
  with workdir.LeaseLock("gs://b/run", store=store, lease_seconds=60):
    assert json.loads(store.data)["pid"] == os.getpid()
  assert time.monotonic() - start < 5
  assert "no longer runs" in capsys.readouterr().err


def test_lease_of_another_host_expires():
  store = _FakeStore()
  store.create(_record(heartbeat=time.time() - 61))  # beyond its lease of 60 s
  with workdir.LeaseLock("gs://b/run", store=store):
    assert json.loads(store.data)["pid"] == os.getpid()
  # Missed heartbeats (older than half the lease): wait for the lease to end, then take it.
  store = _FakeStore()
  store.create(_record(heartbeat=time.time() - 0.6, lease_seconds=1.0))
  start = time.monotonic()
  with workdir.LeaseLock("gs://b/run", store=store, lease_seconds=1.0):
    pass
  assert 0.3 < time.monotonic() - start < 5


def test_lease_refreshed_while_waiting_is_refused():
  store = _FakeStore()
  store.create(_record(heartbeat=time.time() - 0.6, lease_seconds=1.0))
  read = store.read

  def read_and_refresh():  # the holder is alive after all: its heartbeat comes in
    current = read()
    if current is not None and json.loads(current[0])["pid"] == 1:
      store.replace(_record(lease_seconds=1.0), current[1])
    return read()

  store.read = read_and_refresh
  with pytest.raises(workdir.WorkdirLockedError, match="pid 1 on host elsewhere"):
    workdir.LeaseLock("gs://b/run", store=store, lease_seconds=1.0).__enter__()


def test_of_two_runs_taking_over_one_expired_lease_one_wins():
  """Both read the same expired lease; the generation precondition lets one replace it."""
  store = _FakeStore()
  store.create(_record(heartbeat=time.time() - 100))
  stale = store.read()
  first = workdir.LeaseLock("gs://b/run", store=store)
  second = workdir.LeaseLock("gs://b/run", store=store)
  second._store = _StaleOnce(store, stale)  # it read before the first one wrote
  with first:
    with pytest.raises(workdir.WorkdirLockedError, match=f"pid {os.getpid()}"):
      second.__enter__()  # its replace fails (generation moved), it looks again: refused
    assert json.loads(store.data)["token"] == first._token


class _StaleOnce:
  def __init__(self, store, stale):
    self._store, self._stale = store, stale

  def read(self):
    stale, self._stale = self._stale, None
    return stale or self._store.read()

  def __getattr__(self, name):
    return getattr(self._store, name)


def test_a_lease_taken_over_while_held_is_lost_and_checked():
  store = _FakeStore()
  lock = workdir.LeaseLock("gs://b/run", store=store, lease_seconds=0.4)
  with lock:
    generations = store.generation
    time.sleep(0.5)
    assert store.generation > generations  # heartbeats refreshed it
    lock.check()
    store.replace(_record(pid=4242), store.generation)  # another run took it over
    time.sleep(0.3)
    with pytest.raises(workdir.WorkdirLockedError, match="taken over by pid 4242"):
      lock.check()
  assert json.loads(store.data)["pid"] == 4242  # not deleted by the loser


def test_lease_seconds_must_be_a_positive_number(monkeypatch):
  monkeypatch.setenv("VDM_JAX_LEASE_SECONDS", "-1")
  with pytest.raises(ValueError, match="VDM_JAX_LEASE_SECONDS"):
    workdir.LeaseLock("gs://b/run", store=_FakeStore())


# --- the path layer ---


def test_local_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  path = tmp_path / "a.json"
  storage.write_atomic(str(path), "old")

  def full_disk(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError, match="No space left"):
    storage.write_atomic(str(path), "new")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_only_gs_urls_are_accepted():
  assert storage.resolve("gs://bucket/run/") == "gs://bucket/run"
  with pytest.raises(ValueError, match="s3:// paths are not supported"):
    storage.resolve("s3://bucket/run")
  with pytest.raises(ValueError, match="names no bucket"):
    storage.resolve("gs://")


def test_storage_on_the_emulator(gcs):
  root = "gs://test/storage"
  storage.write_atomic(f"{root}/a/x.json", '{"a": 1}')
  storage.write_atomic(f"{root}/a/y.bin", b"\x00\x01")
  assert storage.read_text(f"{root}/a/x.json") == '{"a": 1}'
  assert sorted(storage.listdir(f"{root}/a")) == ["x.json", "y.bin"]
  assert storage.isdir(f"{root}/a") and storage.isfile(f"{root}/a/x.json")
  storage.move_tree(f"{root}/a", f"{root}/b", marker="x.json")
  assert (
    not storage.exists(f"{root}/a/x.json") and storage.read_bytes(f"{root}/b/y.bin") == b"\x00\x01"
  )
  storage.remove(f"{root}/b/y.bin")
  storage.remove(f"{root}/b/y.bin", missing_ok=True)
  with pytest.raises(FileNotFoundError):
    storage.read_text(f"{root}/b/y.bin")


def test_gcs_preconditions_and_the_lease_on_the_emulator(gcs):
  obj = workdir.GcsObject("gs://test/lease/.lock")
  first = obj.create(b"1")
  assert first is not None and obj.create(b"2") is None  # ifGenerationMatch=0
  second = obj.replace(b"3", first)
  assert second is not None and obj.replace(b"4", first) is None
  assert obj.read() == (b"3", second)
  obj.delete(second)
  assert obj.read() is None
  with workdir.lock("gs://test/lease"):
    with pytest.raises(workdir.WorkdirLockedError, match=f"pid {os.getpid()} on host"):
      workdir.lock("gs://test/lease").__enter__()
  assert obj.read() is None


# --- end to end: training, evaluation and sampling with a gs:// work directory ---


def _train_command(workdir_, data_dir, *extra):
  return train_command(
    workdir_,
    data_dir,
    "--config.train.num_steps=30",
    "--config.train.ckpt_every=10",
    "--config.train.log_every=1",
    "--config.train.num_samples=4",
    "--config.eval.batch_size=256",
    *extra,
  )


def _checksums(text: str) -> dict:
  record = json.loads(text)
  record.pop("_format_version")
  return record


@pytest.mark.slow
@pytest.mark.soak  # minutes each: outside CI's budget, run with -m soak
def test_train_kill_resume_evaluate_sample_on_gcs(gcs, tmp_path):
  data_dir = tmp_path / "tfds"
  env = dict(os.environ, **gcs, VDM_JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
  local = tmp_path / "local"
  done = subprocess.run(_train_command(local, data_dir), env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]

  run = "gs://test/run"
  # A lease of 600 s: the holder stopped below (SIGSTOP) stays fresh while the second run starts.
  env["VDM_JAX_LEASE_SECONDS"] = "600"
  proc = subprocess.Popen(
    _train_command(run, data_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    text=True,
  )  # fmt: skip
  try:
    for line in proc.stdout:  # past the first checkpoint
      if line.startswith("[train] step 21:"):  # checkpoint 10 committed (20 waited for it)
        break
    os.kill(proc.pid, signal.SIGSTOP)  # held there, before step 30, while the second run starts
    second = subprocess.run(_train_command(run, data_dir), env=env, capture_output=True, text=True)
    assert second.returncode == 1
    assert f"is in use by a running training (pid {proc.pid} on host" in second.stderr
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    proc.kill()
    proc.communicate()
  resumed = subprocess.run(_train_command(run, data_dir), env=env, capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert (
    "taking over the run lock" in resumed.stderr and "Resumed from gs://test/run" in resumed.stdout
  )
  # Bit-identical to the local run: every array's CRC32 of the final checkpoint.
  assert _checksums(storage.read_text(f"{run}/checksums/30.json")) == _checksums(
    (local / "checksums" / "30.json").read_text()
  )
  rows = [json.loads(r) for r in storage.read_text(f"{run}/metrics.jsonl").splitlines()]
  assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 31))
  assert storage.exists(f"{run}/final_metrics.json") and storage.exists(
    f"{run}/samples_00000030.png"
  )
  assert storage.listdir(f"{run}/tb") and not storage.exists(f"{run}/.lock")

  for tool, args in (
    ("evaluate.py", ["--split=test"]),
    ("sample.py", ["--num_samples=4", "--num_steps=10"]),
  ):
    out = subprocess.run(
      [sys.executable, str(REPO / "scripts" / tool), f"--workdir={run}", *args,
       f"--config.data.data_dir={data_dir}"],
      env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
  assert storage.exists(f"{run}/eval_test_step30_T0.json") or any(
    n.startswith("eval_test_step30") for n in storage.listdir(run)
  )
  assert any(n.startswith("samples_step30_") and n.endswith(".npz") for n in storage.listdir(run))

  # A damaged object in the latest step: the resume falls back to step 20 and redoes it.
  step = f"{run}/checkpoints/30/state"
  data = [n for n in storage.listdir(f"{step}/d")][0]
  blob = storage.read_bytes(f"{step}/d/{data}")
  storage.write_atomic(f"{step}/d/{data}", blob[:-16] + bytes(16))
  again = subprocess.run(
    _train_command(run, data_dir, "--config.train.num_steps=30"), env=env, capture_output=True,
    text=True,
  )  # fmt: skip
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resuming from step 20, the newest intact checkpoint" in again.stderr
  assert storage.exists(f"{run}/checkpoints_damaged/30/commit_success.txt")
  assert _checksums(storage.read_text(f"{run}/checksums/30.json")) == _checksums(
    (local / "checksums" / "30.json").read_text()
  )


@pytest.mark.slow
@pytest.mark.soak  # minutes each: outside CI's budget, run with -m soak
@pytest.mark.multiprocess
def test_two_processes_train_into_one_gcs_workdir_like_one_process(gcs, tmp_path):
  data_dir = tmp_path / "tfds"
  base = dict(os.environ, **gcs, VDM_JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"))
  one = subprocess.run(
    _train_command(tmp_path / "one", data_dir),
    env=dict(base, XLA_FLAGS=devices_flags(2)),  # 1 process x 2 devices, local
    capture_output=True,
    text=True,
  )
  assert one.returncode == 0, one.stderr[-3000:]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  launch = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
  procs = [
    subprocess.Popen(
      _train_command("gs://test/two", data_dir, *launch, f"--process_id={i}"),
      env=dict(base, XLA_FLAGS=devices_flags(1)),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    results = [p.communicate(timeout=900) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, results, strict=True):
    assert p.returncode == 0, err[-3000:]
  assert _checksums(storage.read_text("gs://test/two/checksums/30.json")) == _checksums(
    (tmp_path / "one" / "checksums" / "30.json").read_text()
  )
  final = json.loads(storage.read_text("gs://test/two/final_metrics.json"))["eval"]
  expected = json.loads((tmp_path / "one" / "final_metrics.json").read_text())["eval"]
  assert final["bpd"] == pytest.approx(expected["bpd"], rel=1e-5)
