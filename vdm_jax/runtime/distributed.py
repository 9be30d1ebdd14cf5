"""Starting JAX's multi-controller runtime (several processes, one or many hosts).

With the explicit launch flags, the processes first meet at process 0 in a small Python
rendezvous on the coordinator's port (`_rendezvous`), before JAX's runtime is touched:
every wait there is bounded by `timeout` and every failure is a `ValueError` naming what
is wrong (an unreachable coordinator, a missing process, two processes with the same
--process_id, processes that disagree on --num_processes, --workdir, the config or the
vdm_jax version). JAX's own coordinator then starts on the same port. After it, a lost
peer (`lost_peer`) and a process blocked in a collective after SIGTERM (`_SignalWatchdog`)
end the process with a message instead of a hang or JAX's C++ abort.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import sys
import threading
import time

__all__ = [
  "DEFAULT_TIMEOUT",
  "exit_if_lost_peer",
  "exit_now",
  "initialize",
  "is_multiprocess",
  "lost_peer",
  "prepare_data",
  "process_index",
  "resume_advice",
  "rendezvous",
]

DEFAULT_TIMEOUT = 300
"""Seconds (`--distributed_timeout`): the bound of every wait on another process at start
(JAX's own `initialization_timeout` default), and the grace after SIGTERM/SIGINT."""

_PROTOCOL = "vdm_jax-rendezvous-1"
_LINGER_S = 1.0  # after all joined, process 0 still accepts for this long (duplicates)
_RETRY_S = 0.25  # a process that cannot reach process 0 tries again after this long
_state = {"timeout": DEFAULT_TIMEOUT, "workdir": None}


def initialize(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  *,
  auto: bool,
  timeout: float = DEFAULT_TIMEOUT,
  facts: dict | None = None,
) -> None:
  """Starts JAX's multi-controller runtime when asked to.

  With any of the three launch flags, all three are required; the processes meet first
  (`rendezvous`, with `facts`, all bounded by `timeout` seconds), then
  `jax.distributed.initialize` starts (the coordinator is process 0's host:port,
  reachable by every process). With none of them and `auto` (`--config.distributed=True`),
  JAX detects the cluster itself (TPU pods, SLURM, Open MPI; no rendezvous). Collectives
  between CPU processes use gloo. Call before anything touches a JAX backend.

  Raises:
    ValueError: a launch mistake, with a message saying which (see `rendezvous`).
  """
  given = {
    "--coordinator_address": coordinator_address,
    "--num_processes": num_processes,
    "--process_id": process_id,
  }
  if all(v is None for v in given.values()) and not auto:
    return
  import jax

  if jax.distributed.is_initialized():
    return
  missing = [k for k, v in given.items() if v is None]
  if len(missing) < 3 and missing:
    raise ValueError(
      f"Multi-process launch flags go together: {', '.join(missing)} missing (each process "
      "needs the coordinator's host:port, the number of processes and its own index)."
    )
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id={process_id} must be in [0, {num_processes}).")
  _state["timeout"] = timeout
  _state["workdir"] = (facts or {}).get("--workdir")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  bound = max(1, int(round(timeout)))
  if missing:  # auto: JAX detects the cluster, or finds none
    try:
      jax.distributed.initialize(initialization_timeout=bound, shutdown_timeout_seconds=bound)
    except (ValueError, RuntimeError) as e:
      raise ValueError(
        "config.distributed=True asks JAX to detect a cluster (a TPU pod, SLURM, Open MPI) "
        f"and it found none ({e}). On one machine leave config.distributed=False; to start "
        "processes yourself pass --coordinator_address, --num_processes and --process_id."
      ) from e
  else:
    rendezvous(coordinator_address, num_processes, process_id, facts or {}, timeout)
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=bound,
      shutdown_timeout_seconds=bound,
    )
  if is_multiprocess():
    _SignalWatchdog(timeout).start()


def config_fingerprint(config) -> dict:
  """{"config": hash of the config's JSON, "_fields": flat {field: JSON value}} for
  `rendezvous` facts (the fields name what differs; only the hash is compared)."""
  from vdm_jax.runtime import workdir as workdir_lib

  fields = _flatten(json.loads(workdir_lib.dumps_strict(workdir_lib.config_as_dict(config))))
  text = json.dumps(fields, sort_keys=True)
  return {"config": hashlib.sha256(text.encode()).hexdigest()[:12], "_fields": fields}


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _split_address(address: str) -> tuple[str, int]:
  host, sep, port = address.rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(
      f"--coordinator_address={address} is not host:port with a port in 1..65535 (process "
      "0's host and a free port, the same on every process, e.g. 10.0.0.1:12355)."
    )
  return host, int(port)


def _send(conn, message: dict) -> None:
  conn.sendall((json.dumps(message) + "\n").encode())


def _receive(conn, deadline: float) -> dict | None:
  """One JSON line from `conn` before `deadline`; None if it closed or sent no line."""
  data = b""
  while b"\n" not in data:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      return None
    conn.settimeout(remaining)
    try:
      chunk = conn.recv(65536)
    except (TimeoutError, OSError):
      return None
    if not chunk:
      return None
    data += chunk
  try:
    message = json.loads(data.split(b"\n", 1)[0])
  except ValueError:
    return None
  return message if isinstance(message, dict) and message.get("protocol") == _PROTOCOL else None


def rendezvous(
  coordinator_address: str, num_processes: int, process_id: int, facts: dict, timeout: float
) -> None:
  """The processes meet at process 0 on the coordinator's port and agree, within `timeout` s.

  Each process sends process 0 its --process_id, --num_processes and `facts` (e.g.
  --workdir, the config's hash, the vdm_jax version); process 0 waits until all
  num_processes have joined, compares everything with its own, and answers every process
  with the verdict; the port is then free for JAX's coordinator. A process that cannot
  reach process 0 retries until `timeout`; process 0 waits `timeout` for the others (then
  each has `timeout` more for the verdict).

  Raises:
    ValueError on every process that took part: the coordinator not reached, only K of N
    processes joined, two processes with one --process_id, or a disagreement ("process 1
    has --workdir=/a, process 0 has /b").
  """
  host, port = _split_address(coordinator_address)
  mine = {
    "protocol": _PROTOCOL,
    "--process_id": process_id,
    "--num_processes": num_processes,
    "where": f"{socket.gethostname()} pid {os.getpid()}",
    **facts,
  }
  if process_id == 0:
    _rendezvous_coordinator(port, mine, timeout)
  else:
    _rendezvous_peer(coordinator_address, host, port, mine, timeout)


def _rendezvous_peer(address: str, host: str, port: int, mine: dict, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  last_error = None
  conn = None
  while conn is None:
    try:
      conn = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
    except OSError as e:
      last_error = e
      if time.monotonic() + _RETRY_S > deadline:
        raise ValueError(
          f"process {mine['--process_id']} could not reach the coordinator at {address} "
          f"within {timeout:g} s ({last_error}): is process 0 running? the same "
          "--coordinator_address on every process? (--distributed_timeout sets the wait)"
        ) from None
      time.sleep(_RETRY_S)
  with conn:
    _send(conn, mine)
    verdict = _receive(conn, time.monotonic() + timeout + 5)
  if verdict is None:
    raise ValueError(
      f"process {mine['--process_id']} reached {address}, but no vdm_jax process 0 answered "
      f"there within {timeout:g} s: process 0 stopped, or the processes had already started "
      f"without this one (is --process_id={mine['--process_id']} used twice?), or another "
      "program uses that port."
    )
  if verdict.get("error"):
    raise ValueError(verdict["error"])


def _disagreement(mine: dict, theirs: dict) -> str | None:
  """The first fact on which process `theirs` differs from process 0 (`mine`), in words."""
  i = theirs.get("--process_id")
  for key, value in mine.items():
    if key in ("protocol", "--process_id", "where") or key.startswith("_"):
      continue
    other = theirs.get(key)
    if other == value:
      continue
    if key == "config":
      a, b = mine.get("_fields") or {}, theirs.get("_fields") or {}
      fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
      shown = ", ".join(f"{k}={b.get(k)!r} vs {a.get(k)!r}" for k in fields[:3])
      more = f" and {len(fields) - 3} more" if len(fields) > 3 else ""
      return (
        f"process {i} has a different config (hash {other}, process 0 has {value}"
        f"{'; ' + shown + more if shown else ''})"
      )
    if key == "vdm_jax":
      return f"process {i} runs vdm_jax {other}, process 0 runs {value}"
    return f"process {i} has {key}={other}, process 0 has {value}"
  return None


def _rendezvous_coordinator(port: int, mine: dict, timeout: float) -> None:
  """Process 0's side: every process's hello gathered and checked against its own, then
  one answer (None, or the error every process raises) sent to each."""
  n = mine["--num_processes"]
  conns: list = []
  with _listen(port) as listener:
    joined, error = _gather(listener, mine, timeout, conns)
    if error is None and len(joined) < n:
      absent = ", ".join(str(i) for i in range(n) if i not in joined)
      error = (
        f"only {len(joined)} of {n} processes joined within {timeout:g} s (missing: "
        f"--process_id={absent}): start every process with the same --coordinator_address "
        f"and --num_processes={n} (--distributed_timeout sets the wait)"
      )
    if error:
      error = f"the processes cannot start together: {error}. Nothing was done."
    _answer(conns, error)
  if error:
    raise ValueError(error)


def _listen(port: int) -> socket.socket:
  """A listening socket on `port` of every interface (IPv6 and IPv4 when possible)."""
  try:
    return socket.create_server(
      ("", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=False
    )
  except (OSError, ValueError):
    try:
      return socket.create_server(("", port))
    except OSError as e:
      raise ValueError(
        f"process 0 cannot listen on port {port} of this host ({e}): another program (or "
        "run) uses it; choose another port in --coordinator_address on every process."
      ) from None


def _gather(listener, mine: dict, timeout: float, conns: list) -> tuple[dict, str | None]:
  """The hellos of the processes that join within `timeout` s (and `_LINGER_S` after the
  last expected one, to catch a duplicate): ({process id: hello}, the first problem or
  None). Each accepted connection is appended to `conns`, to be answered."""
  n = mine["--num_processes"]
  deadline = time.monotonic() + timeout
  joined, full_at = {0: mine}, None
  while True:
    now = time.monotonic()
    end = deadline if full_at is None else min(deadline, full_at + _LINGER_S)
    if now >= end:
      return joined, None
    listener.settimeout(end - now)
    try:
      conn, _ = listener.accept()
    except (TimeoutError, OSError):
      continue
    hello = _receive(conn, min(deadline, time.monotonic() + 10))
    if hello is None:
      conn.close()
      continue
    conns.append(conn)
    i = hello.get("--process_id")
    if i in joined:
      return joined, (
        f"two processes have --process_id={i} ({joined[i]['where']} and {hello['where']}): "
        f"give each of the {n} processes its own --process_id in 0..{n - 1}"
      )
    error = _disagreement(mine, hello)
    if error:
      return joined, error
    joined[i] = hello
    if len(joined) == n and full_at is None:
      full_at = time.monotonic()


def _answer(conns: list, error: str | None) -> None:
  """Sends each joined process the outcome, then closes its connection."""
  for conn in conns:
    with conn:
      try:
        _send(conn, {"protocol": _PROTOCOL, "error": error})
        conn.settimeout(5)  # let the peer close first: the port is free again at once
        conn.recv(1)
      except OSError:
        pass


def is_multiprocess() -> bool:
  """Whether JAX's multi-controller runtime runs with several processes (never starts it)."""
  runtime = sys.modules.get("jax._src.distributed")  # read without starting a backend
  return bool(runtime and runtime.global_state.client and runtime.global_state.num_processes > 1)


def process_index() -> int:
  """This process's index in the multi-process runtime (read without starting a backend)."""
  from jax._src import distributed as runtime

  return runtime.global_state.process_id


def _num_processes() -> int:
  from jax._src import distributed as runtime

  return runtime.global_state.num_processes


def resume_advice(workdir: str | None = None, num_processes: int | None = None) -> str:
  """What a rerun of every process does: "The latest checkpoint on disk is step N (<dir>);
  rerun all P processes with the same command to resume from it", or start from step 0.
  `num_processes` None: the running runtime's count (or "all processes" without one)."""
  workdir = workdir or _state["workdir"]
  if num_processes is None and is_multiprocess():
    num_processes = _num_processes()
  every = f"all {num_processes} processes" if num_processes else "all processes"
  rerun = f"rerun {every} with the same command"
  if not workdir:
    return f"To go on, {rerun}."
  from vdm_jax.runtime import storage

  directory = storage.join(workdir, "checkpoints")
  try:  # committed steps only: orbax writes into a temporary folder, then renames it
    steps = [int(n) for n in storage.listdir(directory) if n.isdigit()]
    if storage.is_remote(directory):  # no rename on GCS: a step is committed by a marker
      marker = "commit_success.txt"
      steps = [s for s in steps if storage.exists(storage.join(directory, str(s), marker))]
  except OSError:
    steps = []
  if not steps:
    return f"No checkpoint is on disk yet ({directory}): {rerun} to start again from step 0."
  return (
    f"The latest checkpoint on disk is step {max(steps)} ({directory}); {rerun} to resume from it."
  )


_STATUS = re.compile(
  r"(UNKNOWN|UNAVAILABLE|INTERNAL|DEADLINE_EXCEEDED|ABORTED|CANCELLED|FAILED_PRECONDITION): "
)
_LOST_PEER = (
  "gloo",
  "connection closed",
  "connection reset",
  "broken pipe",
  "heartbeat",
  "unavailable",
  "barrier",
  "deadline_exceeded",
)


def lost_peer(e: BaseException) -> str | None:
  """The message for an error of a collective or of the coordination service (another
  process stopped) in a multi-process run; None for anything else."""
  if not is_multiprocess():
    return None
  # JAX raises these as JaxRuntimeError, or as ValueError (an array fetched to the host):
  # recognised by the status code that starts the text and a word of a lost connection.
  text = str(e)
  if not isinstance(e, (RuntimeError, ValueError)) or not _STATUS.match(text.strip()):
    return None
  if not any(word in text.lower() for word in _LOST_PEER):
    return None
  first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
  return (
    f"lost contact with another process ({first}): a peer stopped or was killed. " + resume_advice()
  )


def exit_if_lost_peer(e: BaseException) -> None:
  """If `e` says another process stopped (`lost_peer`), prints that and ends this process
  at once (exit 1): cleaning up (an asynchronous save's commit, JAX's exit handler) would
  wait for the lost process."""
  message = lost_peer(e)
  if message is not None:
    print(f"[process {process_index()}] error: {message}", file=sys.stderr)
    exit_now(1)


def exit_now(code: int) -> None:
  """Ends a multi-process run at once: flushes the output and `os._exit`s, skipping JAX's
  exit handler, which would wait for the lost peers (then abort in C++)."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)


class _SignalWatchdog(threading.Thread):
  """Ends the process `grace` s after SIGTERM/SIGINT if it is still running then.

  Python runs signal handlers only between bytecodes, so a main thread blocked in a
  collective waiting for a peer that stopped never sees the signal. The C-level handler
  writes the signal's number to `signal.set_wakeup_fd`'s pipe even then, and this thread
  reads it: after `grace` seconds it prints one line and exits with 128 + the signal's
  number, without saving (a clean stop that saves exits long before). The wakeup
  descriptor is set only if no other code uses it: in the work process of a supervising
  parent (`runtime.supervisor`) it reports signals to the parent, which does this instead.
  """

  def __init__(self, grace: float):
    super().__init__(name="vdm_jax-signal-watchdog", daemon=True)
    self.grace = grace
    self._read = None

  def start(self) -> None:
    import signal

    if threading.current_thread() is not threading.main_thread():
      return
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
      previous = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    except ValueError:
      os.close(read)
      os.close(write)
      return
    if previous != -1:  # someone else's: leave it
      signal.set_wakeup_fd(previous)
      os.close(read)
      os.close(write)
      return
    self._read = read
    super().start()

  def run(self) -> None:
    import signal

    first = None
    while True:
      data = os.read(self._read, 64)
      signums = [s for s in data if s in (signal.SIGTERM, signal.SIGINT)]
      if signums and first is None:
        first = signums[0]
        threading.Thread(target=self._expire, args=(first,), daemon=True).start()

  def _expire(self, signum: int) -> None:
    import signal

    time.sleep(self.grace)
    name = signal.Signals(signum).name
    print(
      f"[process {process_index()}] error: still running {self.grace:g} s after {name}: "
      "blocked waiting for another process (stopped, killed or stuck), so nothing could be "
      f"saved (--distributed_timeout sets this wait). {resume_advice()}",
      file=sys.stderr,
      flush=True,
    )
    exit_now(128 + signum)


def prepare_data(data_config) -> None:
  """`data.prepare` on every process: process 0 first, then the others.

  They then find the offline datasets ready on a shared data_dir, or build their own copy
  on a host-local one (`prepare` is idempotent; for the public datasets it checks that
  this host has the files). Call on every process.
  """
  import jax
  from jax.experimental import multihost_utils

  from vdm_jax import data

  if jax.process_index() == 0:
    data.prepare(data_config)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("vdm_jax: data prepared on process 0")
    if jax.process_index() != 0:
      data.prepare(data_config)
    multihost_utils.sync_global_devices("vdm_jax: data prepared")
