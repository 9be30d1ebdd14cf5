"""Runs many short invocations of the tools of scripts/ from one warm process.

Each tool run as `python scripts/X.py` pays for importing JAX, flax, optax, orbax and the
package (seconds each on a small CPU); a catalogue of ~80 refused invocations spent most of
its time there. This server imports them once, then forks one child per invocation: the
child sets its argv, runs the script as `__main__` (its flags are defined in the child only)
and exits with the script's status, its stdout and stderr going to files the parent reads.
No JAX backend is started before the fork, so the children start theirs as a fresh process
would.

  python tests/_forkcli.py < cases.json > results.json

cases.json: a list of [script_path, [args...]]; results: a list of
{"returncode", "stdout", "stderr"} in the same order. The environment and the working
directory are the server's own (the caller sets them when it starts the server).
"""

import json
import os
import runpy
import sys
import tempfile
import traceback


def _preload() -> None:
  """Imports the heavy modules every tool needs, without starting a JAX backend."""
  import absl.app  # noqa: F401
  import flax  # noqa: F401
  import jax  # noqa: F401
  import ml_collections  # noqa: F401
  import optax  # noqa: F401
  import orbax.checkpoint  # noqa: F401
  from jax._src import xla_bridge

  import vdm_jax.data.pipeline  # noqa: F401
  import vdm_jax.evaluation.bpd  # noqa: F401
  import vdm_jax.models.factory  # noqa: F401
  import vdm_jax.training.loop  # noqa: F401

  assert not xla_bridge._backends, "a backend started before the fork"


def _child(script: str, args: list[str], out: int, err: int) -> None:
  os.dup2(out, 1)
  os.dup2(err, 2)
  sys.argv = [script, *args]
  sys.orig_argv = [sys.executable, script, *args]  # what a re-launch (the supervisor) runs
  sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python script.py` sets it
  code = 0
  try:
    runpy.run_path(script, run_name="__main__")
  except SystemExit as e:
    if e.code is None:
      code = 0
    elif isinstance(e.code, int):
      code = e.code
    else:  # sys.exit("message"): the interpreter prints it and exits 1
      print(e.code, file=sys.stderr)
      code = 1
  except BaseException:  # as the interpreter: the traceback, then status 1
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def _start(script: str, args: list[str]):
  out = tempfile.TemporaryFile()
  err = tempfile.TemporaryFile()
  pid = os.fork()
  if pid == 0:
    _child(script, args, out.fileno(), err.fileno())
  return pid, out, err


def _finish(pid, out, err) -> dict:
  _, status = os.waitpid(pid, 0)
  result = {"returncode": os.waitstatus_to_exitcode(status)}
  for name, f in (("stdout", out), ("stderr", err)):
    f.seek(0)
    result[name] = f.read().decode(errors="replace")
    f.close()
  return result


def main() -> None:
  cases = json.load(sys.stdin)
  workers = int(os.environ.get("FORKCLI_WORKERS", "2"))
  _preload()
  results: list = [None] * len(cases)
  running: list = []
  for i, (script, args) in enumerate(cases):
    if len(running) == workers:
      j, started = running.pop(0)
      results[j] = _finish(*started)
    running.append((i, _start(script, args)))
  for j, started in running:
    results[j] = _finish(*started)
  json.dump(results, sys.__stdout__)


if __name__ == "__main__":
  main()
