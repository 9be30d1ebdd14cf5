"""A supervising parent for multi-process launches: the work runs in a child process it watches.

When a peer dies, JAX's runtime can end the survivors in C++ (`LOG(FATAL)`: "Terminating
process because the JAX distributed service detected fatal errors", a stack dump,
SIGABRT) before Python sees anything: no Python code of that process can then print a
message. So a multi-process launch of `train`, `evaluate` or `sample` (`--num_processes`
> 1, or `--config.distributed=True`) runs the tool again in a child process (the same
command line, `sys.orig_argv`) and stays a small parent that imports no JAX:

* the child's stderr passes through the parent line by line; from the first line of a
  C++ fatal error on (`FATAL_MARKERS`), the lines are held back and written to a log file;
* when the child ends, the parent ends with its exit status; a child ended by SIGABRT (or
  after a fatal error) becomes one line, "[process i] error: JAX's runtime aborted ...: a
  peer stopped or was killed. <what a rerun does>", and exit status 1; another signal is
  one line and 128 + the signal's number;
* SIGTERM and SIGINT sent to the parent reach the child once: the child reports every
  signal it receives through `signal.set_wakeup_fd` on a pipe to the parent, so a signal
  sent to the whole process group (a terminal's Ctrl-C, a batch system signalling every
  process) is not delivered twice; one sent to the parent alone is forwarded after
  `FORWARD_DELAY_S`;
* after the first SIGTERM/SIGINT, a child still running `grace` seconds later
  (`--distributed_timeout`: blocked in a collective waiting for a stopped peer) is killed,
  with one line and 128 + the signal's number;
* the child dies with its parent (`PR_SET_PDEATHSIG` on Linux, else a thread watching the
  parent), so `kill -9` of the parent leaves no worker behind.

Single-process runs start no child. `VDM_JAX_SUPERVISOR=0` runs the work in the launched
process itself (then a C++ abort prints JAX's own report). Standard library only.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

__all__ = [
  "CHILD_ENV",
  "FATAL_MARKERS",
  "FORWARD_DELAY_S",
  "SWITCH_ENV",
  "attach",
  "enabled",
  "is_child",
  "supervise",
]

CHILD_ENV = "VDM_JAX_SUPERVISED_FD"  # in the child: the pipe descriptor of its wakeup fd
"""Environment variable set in the work process: the pipe descriptor its signal wakeup fd writes
to."""
SWITCH_ENV = "VDM_JAX_SUPERVISOR"  # "0": no supervising parent
"""Environment variable: "0" runs a multi-process launch without the supervising parent."""
FORWARD_DELAY_S = 0.3  # a signal the child did not receive itself within this is forwarded
"""Seconds after which a signal the work process did not receive itself is forwarded to it."""
_OFF = ("0", "off", "no", "false", "none")
_EOF_WAIT_S = 2.0  # after the child ended, how long its stderr may stay open
FATAL_MARKERS = re.compile(
  r"^F\d{4} \d\d:\d\d:\d\d"  # glog's FATAL line (e.g. the coordination service client)
  r"|Terminating process because the JAX distributed service detected fatal errors"
  r"|Check failure stack trace"
  r"|^\*\*\* SIG\w+ received"
  r"|^Fatal Python error: Aborted"
)
"""Lines that start JAX's C++ fatal-error report on stderr."""
_OWN_ERROR = re.compile(r"^(\[process \d+\] )?error: ")  # a message of this project
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def is_child() -> bool:
  """Whether this process is the work process of a supervising parent."""
  return CHILD_ENV in os.environ


def enabled() -> bool:
  """Whether a multi-process launch here would start a supervising parent."""
  return not is_child() and os.environ.get(SWITCH_ENV, "").strip().lower() not in _OFF


def attach() -> None:
  """In the child (call right after the recording signal handlers are installed): report
  every signal to the parent through the wakeup pipe, and die with the parent."""
  fd = os.environ.pop(CHILD_ENV, None)
  if fd is None:
    return
  os.environ[SWITCH_ENV] = "0"  # the tool's own subprocesses start no supervisor either
  fd = int(fd)
  os.set_blocking(fd, False)
  signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
  parent = os.getppid()
  if not _die_with_parent():
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
  if os.getppid() != parent or parent == 1:  # the parent died before the watch was set
    os._exit(128 + signal.SIGKILL)


def _die_with_parent() -> bool:
  if not sys.platform.startswith("linux"):
    return False
  try:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    return False


def _watch_parent(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(0.5)
  os._exit(128 + signal.SIGKILL)


class _Relay:
  """The child's stderr, passed through line by line until a C++ fatal error starts."""

  def __init__(self):
    self.partial = b""
    self.held: list[bytes] = []  # the fatal error's lines, not shown
    self.own_error = False  # the child printed the project's error line after them

  def feed(self, data: bytes) -> None:
    *lines, self.partial = (self.partial + data).split(b"\n")
    for line in lines:
      self._line(line + b"\n")
    cut = self.partial.rfind(b"\r") + 1  # a progress bar redrawn in place: show it now
    if cut and not self.held:
      _write(self.partial[:cut])
      self.partial = self.partial[cut:]

  def close(self) -> None:
    if self.partial:
      self._line(self.partial)
      self.partial = b""

  def _line(self, line: bytes) -> None:
    text = line.decode(errors="replace")
    if self.held and _OWN_ERROR.match(text):  # the Python side won the race: its line
      self.own_error = True
      _write(line)
    elif not self.held and not FATAL_MARKERS.search(text):
      _write(line)
    else:
      self.held.append(line)

  def first_fatal_line(self) -> str:
    for line in self.held:
      text = line.decode(errors="replace").strip()
      if FATAL_MARKERS.search(text):
        return re.sub(r"^F\d{4} [\d:.]+\s+\d+\s+", "", text)[:240]
    return ""

  def save(self) -> str | None:
    """Writes the held lines to a log file; returns its path (None if none or unwritable)."""
    if not self.held:
      return None
    try:
      fd, path = tempfile.mkstemp(prefix="vdm_jax-abort-", suffix=".log")
      with os.fdopen(fd, "wb") as f:
        f.writelines(self.held)
    except OSError:
      return None
    return path


def _write(data: bytes) -> None:
  try:
    sys.stderr.buffer.write(data)
    sys.stderr.buffer.flush()
  except (OSError, ValueError):
    pass


def supervise(*, label: str, grace: float, advice, command: list[str] | None = None) -> int:
  """Runs `command` (default: this process's command line again) as the work process and
  watches it (module docstring); returns the exit status for this process.

  Args:
    label: the prefix of this process's lines, e.g. "[process 1] ".
    grace: seconds a child may take to stop after the first SIGTERM/SIGINT.
    advice: a function returning what a rerun does (read at the end: the checkpoints then).
    command: the child's argv (tests); default `[sys.executable, *sys.orig_argv[1:]]`.
  """
  command = command or [sys.executable, *sys.orig_argv[1:]]
  report_r, report_w = os.pipe()  # the child's wakeup fd: one byte per signal it receives
  wake_r, wake_w = os.pipe()  # this process's wakeup fd
  for fd in (wake_r, wake_w, report_r):
    os.set_blocking(fd, False)
  previous = {s: signal.signal(s, lambda *_: None) for s in _STOP_SIGNALS}
  previous_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
  env = dict(os.environ, **{CHILD_ENV: str(report_w)})
  try:
    child = subprocess.Popen(command, stderr=subprocess.PIPE, env=env, pass_fds=(report_w,))
  except BaseException:
    signal.set_wakeup_fd(previous_wakeup)
    for s, handler in previous.items():
      signal.signal(s, handler)
    raise
  os.close(report_w)
  try:
    return _watch(child, report_r, wake_r, label=label, grace=grace, advice=advice)
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
    signal.set_wakeup_fd(previous_wakeup)
    for fd in (report_r, wake_r, wake_w):
      os.close(fd)


def _watch(child, report_r: int, wake_r: int, *, label, grace, advice) -> int:
  """Relays the child's stderr, forwards stop signals to it, and returns this process's
  exit status once it has ended (or was killed `grace` s after the first stop signal)."""
  watch = _Watch(child, report_r, wake_r, label=label, grace=grace, advice=advice)
  while True:
    ready = watch.wait()
    now = time.monotonic()
    watch.read(ready, now)
    watch.forward_due(now)
    status = watch.kill_if_past_grace(now)
    if status is None:
      status = watch.status_if_ended(now)
    if status is not None:
      return status


class _Watch:
  """What `_watch` keeps between two waits: the signals received here and not yet matched
  by the child's reports, the first stop signal, the child's stderr."""

  def __init__(self, child, report_r: int, wake_r: int, *, label, grace, advice):
    self.child, self.report_r, self.wake_r = child, report_r, wake_r
    self.label, self.grace, self.advice = label, grace, advice
    self.relay = _Relay()
    self.err = child.stderr.fileno()
    os.set_blocking(self.err, False)
    self.to_forward: list[tuple[int, float]] = []  # (signal, when) received here, unmatched
    self.direct = {s: 0 for s in _STOP_SIGNALS}  # received by the child itself, not forwarded
    self.first_stop: tuple[int, float] | None = None
    self.err_open, self.ended = True, None

  def wait(self) -> list[int]:
    """The descriptors ready within 0.5 s, or by the next forwarding or grace deadline."""
    now = time.monotonic()
    waits = [when for _, when in self.to_forward]
    if self.first_stop is not None:
      waits.append(self.first_stop[1] + self.grace)
    timeout = max(0.0, min([now + 0.5, *waits]) - now)
    readers = [self.report_r, self.wake_r] + ([self.err] if self.err_open else [])
    try:
      return select.select(readers, [], [], timeout)[0]
    except InterruptedError:
      return []

  def read(self, ready: list[int], now: float) -> None:
    """Signals received here (to forward), the child's reports of its own, its stderr."""
    if self.wake_r in ready:
      for s in _read_bytes(self.wake_r):
        if s in _STOP_SIGNALS:
          self.to_forward.append((s, now + FORWARD_DELAY_S))
          self.first_stop = self.first_stop or (s, now)
    if self.report_r in ready:
      for s in _read_bytes(self.report_r):
        if s in _STOP_SIGNALS:
          self.direct[s] += 1
          self.first_stop = self.first_stop or (s, now)
    if self.err_open and self.err in ready:
      data = _read_all(self.err)
      if data is None:
        self.err_open = False
        self.relay.close()
      else:
        self.relay.feed(data)

  def forward_due(self, now: float) -> None:
    """Forwards each signal whose delay has passed, unless the child received it itself."""
    for item in [i for i in self.to_forward if i[1] <= now]:
      self.to_forward.remove(item)
      s = item[0]
      if self.direct[s] > 0:  # the child received this one itself (sent to the process group)
        self.direct[s] -= 1
      elif self.child.poll() is None:
        self.child.send_signal(s)
        # Its report byte is not counted as a direct one: it comes from the forwarding.
        self.direct[s] -= 1

  def kill_if_past_grace(self, now: float) -> int | None:
    """Kills a child still running `grace` s after the first stop signal: its status."""
    if self.first_stop is None or self.child.poll() is not None:
      return None
    if now < self.first_stop[1] + self.grace:
      return None
    s = self.first_stop[0]
    self.child.kill()
    self.child.wait()
    _drain(self.err, self.relay)
    _line(
      f"{self.label}error: still running {self.grace:g} s after {signal.Signals(s).name}: "
      "blocked waiting for another process (stopped, killed or stuck), so nothing could be "
      f"saved (--distributed_timeout sets this wait). {self.advice()}"
    )
    return 128 + s

  def status_if_ended(self, now: float) -> int | None:
    """This process's status once the child has ended and its stderr is read to the end."""
    if self.child.poll() is None:
      return None
    # Its stderr ends with it (or, held open by a process it started, soon after).
    self.ended = self.ended or now
    if self.err_open and now <= self.ended + _EOF_WAIT_S:
      return None
    if self.err_open:
      _drain(self.err, self.relay)
    self.relay.close()
    return _status(self.child.returncode, self.relay, label=self.label, advice=self.advice)


def _read_bytes(fd: int) -> bytes:
  data = _read_all(fd)
  return data or b""


def _read_all(fd: int) -> bytes | None:
  """What `fd` holds now (b"" if nothing yet); None at end of file."""
  chunks = []
  while True:
    try:
      chunk = os.read(fd, 65536)
    except BlockingIOError:
      break
    except OSError:
      return b"".join(chunks) or None
    if not chunk:
      return b"".join(chunks) or None
    chunks.append(chunk)
  return b"".join(chunks)


def _drain(fd: int, relay: _Relay) -> None:
  while (data := _read_all(fd)) is not None:
    if not data:
      break
    relay.feed(data)
  relay.close()


def _line(text: str) -> None:
  _write((text + "\n").encode())


def _status(code: int, relay: _Relay, *, label, advice) -> int:
  """This process's exit status for the child's `code` (Popen's: -N for signal N)."""
  if code >= 0:  # the child exited by itself, with its own message if it printed one
    if not relay.own_error:
      for line in relay.held:
        _write(line)
    return code
  fatal = relay.first_fatal_line()
  log = relay.save()
  kept = f" (JAX's report, {len(relay.held)} lines: {log})" if log else ""
  if fatal or code == -signal.SIGABRT:
    what = f": {fatal}" if fatal else ""
    _line(
      f"{label}error: JAX's runtime aborted{what}{kept}. A peer stopped or was killed "
      f"(or the coordinator, process 0, is gone). {advice()}"
    )
    return 1
  name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
  cause = " (by another program, or by the system when memory ran out)" if name == "SIGKILL" else ""
  _line(f"{label}error: the work process was ended by {name}{cause}{kept}. {advice()}")
  return 128 - code
