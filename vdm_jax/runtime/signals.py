"""SIGTERM and SIGINT as stop requests: the handler records the signal, the program stops at
its next safe point (`check`, or the training loop's own checks).

Python's default SIGINT handler raises KeyboardInterrupt in whatever code is running,
callbacks whose exceptions are ignored included (a JAX garbage-collection callback
swallowed Ctrl-C and training ran to its end); SIGTERM's default kills at once, in the
middle of a checkpoint write. So the command-line tools `install` handlers that only
record the signal (`_cli.run`, before the flags are parsed and before JAX is imported),
and the program asks `received()` / `check(...)` where stopping loses nothing:

* before the work starts (exit 128 + signal, one line, nothing written);
* between training steps (finish the step, save, exit);
* after the last step (wait for the final save, skip the final evaluation);
* between evaluation batches, and before any output is written.

A second signal stops at once: with the handlers of `install`, the process exits with
128 + signal after one line; under `scope` (the library's `train_and_evaluate` without the
CLI), it raises KeyboardInterrupt as Python would. Standard library only: nothing here may
import JAX.
"""

import contextlib
import os
import signal
import threading

__all__ = [
  "SIGNALS",
  "Stopped",
  "check",
  "exit_at_once",
  "install",
  "installed",
  "name",
  "notice",
  "reassert",
  "received",
  "scope",
]

SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that request a clean stop: SIGTERM (preemption) and SIGINT (Ctrl-C)."""


class Stopped(Exception):
  """A stop request honoured at a safe point; the CLI exits with 128 + `signum`."""

  def __init__(self, signum: int, message: str):
    self.signum = signum
    super().__init__(message)


class _State:
  signum: int | None = None  # the first signal received, until `scope` ends
  process_wide = False  # handlers of `install`: a second signal exits at once
  notice: str | None = None  # printed when the first signal arrives (None: nothing)
  at_once: str | None = None  # inside `exit_at_once`: the first signal exits, saying this
  scoped = False  # inside `scope`


_state = _State()


def name(signum: int) -> str:
  """The signal's name, e.g. "SIGTERM"."""
  return signal.Signals(signum).name


def _write(text: str) -> None:
  # os.write, not print: a handler may run while the main thread is inside a print.
  try:
    os.write(2, text.encode())
  except OSError:
    pass


def _handle(signum, frame) -> None:
  if _state.signum is None and _state.at_once is None:
    _state.signum = signum
    if _state.notice:
      _write(f"\n{name(signum)} received: {_state.notice} (send it again to stop at once).\n")
    return
  if not _state.process_wide:
    _state.signum = _state.signum or signum
    raise KeyboardInterrupt
  if _state.signum is None:
    _write(f"\nStopped by {name(signum)} {_state.at_once}.\n")
  else:
    _write(f"\n{name(signum)} received again: stopping at once.\n")
  os._exit(128 + signum)


def _main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def install() -> None:
  """Installs the recording handlers for the rest of the process (the CLI's first act)."""
  if _main_thread() and not _state.process_wide:
    for sig in SIGNALS:
      signal.signal(sig, _handle)
    _state.process_wide = True


def installed() -> bool:
  """Whether the process-wide handlers (`install`) are in place."""
  return _state.process_wide


@contextlib.contextmanager
def scope():
  """The recording handlers for the block (the library's training without the CLI):
  previous handlers restored and the record cleared after it. Under `install`, or off
  the main thread, it changes nothing."""
  if _state.process_wide or not _main_thread():
    yield
    return
  previous = {sig: signal.signal(sig, _handle) for sig in SIGNALS}
  _state.signum, _state.scoped = None, True
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    _state.signum, _state.scoped = None, False


def reassert() -> None:
  """Installs the handlers again where they are in force. Call after `jax.distributed`
  starts: its preemption notifier replaces the SIGTERM handler at the C level (Python's
  `signal.getsignal` does not see it), and SIGTERM was then ignored by the run."""
  if (_state.process_wide or _state.scoped) and _main_thread():
    for sig in SIGNALS:
      signal.signal(sig, _handle)


def received() -> int | None:
  """The signal received (and not yet consumed by a `scope` ending), or None."""
  return _state.signum


def check(where: str) -> None:
  """Raises `Stopped` ("Stopped by SIGINT <where>.") if a signal was received."""
  if _state.signum is not None:
    raise Stopped(_state.signum, f"Stopped by {name(_state.signum)} {where}.")


@contextlib.contextmanager
def notice(text: str):
  """While in the block, the first signal is answered at once with `text` (what the
  program does before it exits, e.g. "finishing the current step, saving a checkpoint,
  then exiting")."""
  before, _state.notice = _state.notice, text
  try:
    yield
  finally:
    _state.notice = before


@contextlib.contextmanager
def exit_at_once(where: str):
  """A block that writes nothing and cannot stop in between (one long compiled call):
  with the CLI's handlers, a signal in it exits at once with "Stopped by SIG... <where>."
  (a signal received before it raises `Stopped` on entry)."""
  check(where)
  before, _state.at_once = _state.at_once, where
  try:
    yield
  finally:
    _state.at_once = before
