"""The supervising parent of multi-process launches (`vdm_jax.runtime.supervisor`), with
stand-in work processes (standard library only, so each case takes well under a second):
exit statuses pass through, a C++ abort becomes one line, a signal reaches the work once
(sent to the parent alone or to the whole process group), a work process that ignores a
stop is killed after the grace, and the work dies with a parent killed by SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import REPO

from vdm_jax.runtime import supervisor

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ABORT_REPORT = (
  "E1202 14:01:16.415980   14234 coordination_service_agent.cc:289] Polled an error from "
  "coordination service (this can be an error from this or another task).\n"
  "F1202 14:01:16.416919   14234 client.h:80] Terminating process because the JAX distributed "
  "service detected fatal errors. This most likely indicates that another task died\n"
  "*** Check failure stack trace: ***\n"
  "    @     0x7f1e2c3d4e5f  absl::log_internal::LogMessageFatal::~LogMessageFatal()\n"
)


def _parent(work: str, *, grace: float = 30.0, session: bool = False) -> subprocess.Popen:
  """A supervising parent (as `_cli.run` starts it) of the Python program `work`."""
  work = textwrap.dedent(work)
  code = textwrap.dedent(f"""
    import sys
    from vdm_jax.runtime import supervisor
    sys.exit(supervisor.supervise(
      label="[process 1] ", grace={grace}, advice=lambda: "ADVICE.",
      command=[sys.executable, "-c", {work!r}],
    ))
  """)
  env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
  env.pop(supervisor.SWITCH_ENV, None)
  return subprocess.Popen(
    [sys.executable, "-c", code],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
    start_new_session=session,
  )


# A work process as `_cli.run` makes it: recording handlers, then `attach`.
WORK_HEAD = """
  import os, signal, sys, time
  got = []
  for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda n, f: got.append(n))
  from vdm_jax.runtime import supervisor
  supervisor.attach()
  print("ready", os.getpid(), flush=True)
"""


def _ready(parent) -> int:
  line = parent.stdout.readline()
  assert line.startswith("ready"), (line, parent.stderr.read() if parent.poll() is not None else "")
  return int(line.split()[1])


def test_exit_status_and_output_pass_through():
  work = "import sys; print('out'); sys.stderr.write('err\\n 50%\\r100%\\r'); sys.exit(3)"
  parent = _parent(work)
  out, err = parent.communicate(timeout=30)
  # (text mode reads a carriage return as a line end)
  assert parent.returncode == 3 and out == "out\n" and err == "err\n 50%\n100%\n"


def test_a_process_left_holding_stderr_does_not_keep_the_parent():
  # The work starts a process that outlives it with the same stderr.
  work = (
    "import subprocess, sys; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); sys.exit(5)"
  )
  parent = _parent(work)
  start = time.monotonic()
  parent.wait(timeout=20)
  assert parent.returncode == 5 and time.monotonic() - start < 15


def test_a_cpp_abort_becomes_one_line_and_exit_1(tmp_path):
  work = f"import os, sys; print('before'); sys.stderr.write({ABORT_REPORT!r}); os.abort()"
  parent = _parent(work)
  out, err = parent.communicate(timeout=30)
  assert parent.returncode == 1, err
  lines = err.splitlines()
  # The lines before the fatal error pass; JAX's report is held back, saved to a log.
  assert lines[0].startswith("E1202") and len(lines) == 2, err
  assert lines[1].startswith(
    "[process 1] error: JAX's runtime aborted: client.h:80] Terminating process because the "
    "JAX distributed service detected fatal errors."
  )
  assert lines[1].endswith(
    "A peer stopped or was killed (or the coordinator, process 0, is gone). ADVICE."
  )
  log = lines[1].split("lines: ")[1].split(")")[0]
  try:
    assert "Check failure stack trace" in open(log).read()
  finally:
    os.remove(log)


def test_the_projects_own_line_wins_over_a_racing_abort():
  # The Python side saw the lost peer first and exits 1 while JAX prints its fatal line.
  work = (
    f"import os, sys; sys.stderr.write({ABORT_REPORT!r}); "
    "sys.stderr.write('[process 1] error: lost contact with another process (x)\\n'); "
    "sys.stderr.flush(); os._exit(1)"
  )
  parent = _parent(work)
  _, err = parent.communicate(timeout=30)
  assert parent.returncode == 1
  assert err.splitlines()[-1] == "[process 1] error: lost contact with another process (x)"
  assert "Terminating process" not in err and "Check failure" not in err


def test_work_killed_by_another_signal_is_one_line():
  parent = _parent("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
  _, err = parent.communicate(timeout=30)
  assert parent.returncode == 128 + signal.SIGKILL
  assert err == "[process 1] error: the work process was ended by SIGKILL (by another program, " \
    "or by the system when memory ran out). ADVICE.\n"  # fmt: skip


WORK_COUNTS_SIGNALS = (
  WORK_HEAD
  + """
  while not got:
    time.sleep(0.05)
  time.sleep(1.0)  # a duplicate would arrive within this
  print("got", [signal.Signals(s).name for s in got], flush=True)
  sys.exit(128 + got[0])
"""
)


@pytest.mark.parametrize(("to", "sig"), [("parent", signal.SIGTERM), ("group", signal.SIGINT)])
def test_a_signal_reaches_the_work_once(to, sig):
  parent = _parent(WORK_COUNTS_SIGNALS, session=True)
  _ready(parent)
  if to == "parent":
    parent.send_signal(sig)
  else:  # a terminal's Ctrl-C, or a batch system signalling every process
    os.killpg(parent.pid, sig)
  out, err = parent.communicate(timeout=30)
  assert parent.returncode == 128 + sig, err
  assert out == f"got ['{signal.Signals(sig).name}']\n", (out, err)


def test_a_second_signal_reaches_the_work_too():
  work = (
    WORK_HEAD
    + """
  while len(got) < 2:
    time.sleep(0.05)
  print("got", len(got), flush=True)
  sys.exit(130)
"""
  )
  parent = _parent(work)
  _ready(parent)
  parent.send_signal(signal.SIGINT)
  time.sleep(1)
  parent.send_signal(signal.SIGINT)
  out, _ = parent.communicate(timeout=30)
  assert parent.returncode == 130 and out == "got 2\n"


def test_work_that_does_not_stop_is_killed_after_the_grace():
  parent = _parent(WORK_HEAD + "\n  time.sleep(120)\n", grace=1.0)
  _ready(parent)
  parent.send_signal(signal.SIGTERM)
  sent = time.monotonic()
  _, err = parent.communicate(timeout=60)
  took = time.monotonic() - sent
  assert parent.returncode == 128 + signal.SIGTERM
  assert err.startswith("[process 1] error: still running 1 s after SIGTERM: blocked waiting")
  assert err.endswith("ADVICE.\n") and 1 <= took < 20


def test_the_work_dies_with_its_parent():
  parent = _parent(WORK_HEAD + "\n  time.sleep(120)\n")
  child = _ready(parent)
  parent.kill()
  parent.wait()
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and _alive(child):
    time.sleep(0.1)
  assert not _alive(child)


def _alive(pid: int) -> bool:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split(") ")[1][0] != "Z"  # a zombie has ended
  except FileNotFoundError:
    return False
  except OSError:  # not Linux: signal 0 probes
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True


def test_switch_and_child_marker(monkeypatch):
  monkeypatch.delenv(supervisor.CHILD_ENV, raising=False)
  monkeypatch.delenv(supervisor.SWITCH_ENV, raising=False)
  assert supervisor.enabled()
  monkeypatch.setenv(supervisor.SWITCH_ENV, "0")
  assert not supervisor.enabled()
  monkeypatch.delenv(supervisor.SWITCH_ENV)
  monkeypatch.setenv(supervisor.CHILD_ENV, "7")
  assert supervisor.is_child() and not supervisor.enabled()
