"""What the command-line tools in `scripts/` share (they alone define flags).

* `run(main)`: every tool's entry point. `--help` prints the tool's own flags (launch and
  plugin flags included); a bad flag, config name or config field is one `error:` line
  with exit status 1; a user error raised while working (`user_errors_exit`) likewise;
  only bugs print a traceback. With `reads_run=True` (evaluate, sample, diagnostics) the
  run's recorded config is the default `--config`.
* `define_config()`: `--config` takes a packaged config's name (`--config=digits`), a
  `.py` config file, or a run's record (`<workdir>/config.json`, or the work directory).
* `--import=my_package.my_module` (every tool, repeatable): plugin modules imported before
  the config is validated, recorded in `config.imports`.
* `start()`: quiet logs, the compilation cache, plugins, several processes.
* Signals: `run` first installs handlers that only record SIGTERM/SIGINT (`runtime.signals`); the
  tool stops at its next safe point with 128 + the signal's number and one line.
* Several processes (`--num_processes` > 1, `--config.distributed=True`): the work runs in a
  child process watched by the launched one (`runtime.supervisor`), so a lost peer that makes
  JAX abort in C++ still ends with one line and a non-zero status.
"""

import contextlib
import importlib.util
import os
import re
import shlex
import sys
import traceback

from absl import flags, logging

from vdm_jax.runtime import distributed, storage, supervisor
from vdm_jax.runtime import signals as _signals

__all__ = [
  "check_flag_range",
  "check_output_flag",
  "output_problem",
  "compilation_cache_dir",
  "config_names",
  "define_config",
  "define_launch_flags",
  "enable_compilation_cache",
  "initialize_distributed",
  "quiet_logging",
  "reproduce_command",
  "resolve_config",
  "run",
  "start",
  "user_errors_exit",
]

CONFIGS_PACKAGE = "vdm_jax_configs"  # configs/ of the repository, installed as a package
_IMPORTS = flags.DEFINE_multi_string(
  "import",
  [],
  "Plugin module to import before the config is validated (repeatable), e.g. one that "
  "registers a denoiser, schedule or dataset (recorded in the run's config.imports)",
)
# The command line as typed, before `run` adds the run's record as --config.
_TYPED_ARGV: list[str] = []

CACHE_ENV = "VDM_JAX_COMPILATION_CACHE_DIR"
_CACHE_OFF = ("", "0", "none", "off", "false", "no")


initialize_distributed = distributed.initialize  # imports JAX only when called


def quiet_logging() -> None:
  """Show absl/orbax/jax INFO logs only when asked for (`--verbosity=0` or `-v 0`).

  The scripts print what a user needs; the libraries' INFO lines (checkpoint I/O,
  backend probing) would bury it. Call first thing in `main`.
  """
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)


def compilation_cache_dir(path: str | None = None) -> str | None:
  """Where `enable_compilation_cache(path)` puts JAX's compiled programs; None: nowhere.

  The first of: `path`; `$VDM_JAX_COMPILATION_CACHE_DIR`; `$JAX_COMPILATION_CACHE_DIR`
  (JAX's own variable); `$XDG_CACHE_HOME/vdm_jax/jax`, else `~/.cache/vdm_jax/jax`. A
  value of "none", "off", "0", "false", "no" or "" turns the cache off.
  """
  for value in (path, os.environ.get(CACHE_ENV), os.environ.get("JAX_COMPILATION_CACHE_DIR")):
    if value is not None:
      return None if value.strip().lower() in _CACHE_OFF else os.path.expanduser(value)
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "vdm_jax", "jax")


def enable_compilation_cache(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache, so a relaunch skips recompiling.

  A second launch of a command with the same model (a resume, a relaunch in a new work
  directory) then loads its compiled steps from disk instead of compiling them again
  (2 CPU cores, digits: the first training step after 11.5 s cold, 4.0 s warm).
  The directory is `compilation_cache_dir(path)`; with the cache off
  (`VDM_JAX_COMPILATION_CACHE_DIR=none`) JAX's cache is switched off as well. Programs
  that compile in under 1 s are not written (JAX 0.10's default, pinned here; the digits
  steps take 1.4-8.5 s, the small helper programs under 0.2 s), unless
  `$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` says otherwise. If the directory cannot
  be created, a warning is printed and the run goes on without the cache. Call first
  thing in `main`, before anything is compiled.

  Returns:
    The cache directory, or None when the cache is off.
  """
  import jax

  directory = compilation_cache_dir(path)
  if directory is not None:
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      print(f"warning: no compilation cache ({e}); set {CACHE_ENV} to move it.", file=sys.stderr)
      directory = None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_enable_compilation_cache", directory is not None)
  if directory is not None and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return directory


def define_launch_flags():
  """Defines --coordinator_address, --num_processes, --process_id (several processes, one
  or many hosts) and --distributed_timeout in the calling script; returns their holders."""
  return (
    flags.DEFINE_string(
      "coordinator_address", None, "Several processes: host:port of process 0 (all processes)."
    ),
    flags.DEFINE_integer("num_processes", None, "Several processes: how many."),
    flags.DEFINE_integer("process_id", None, "Several processes: this one's index."),
    flags.DEFINE_float(
      "distributed_timeout",
      distributed.DEFAULT_TIMEOUT,
      "Several processes: seconds to wait for the coordinator and the other processes at "
      "start, and for a clean stop after SIGTERM/SIGINT, before exiting with an error.",
      lower_bound=0.1,
    ),
  )


def check_flag_range(
  name: str,
  *,
  minimum: float,
  exclusive: bool = False,
  optional: bool = False,
  maximum: float | None = None,
  why: str = "",
) -> None:
  """Registers a check of the numeric flag `--name` (run while the flags are parsed, so a
  bad value stops the tool before any work): finite and >= `minimum` (> with
  `exclusive`), and < `maximum` when given; None passes when `optional`. `why` is added
  to the message (e.g. the reason for a bound)."""
  import math

  relation = ">" if exclusive else ">="

  def valid(value) -> bool:
    if value is None:
      return optional
    if not math.isfinite(value) or (maximum is not None and value >= maximum):
      return False
    return value > minimum if exclusive else value >= minimum

  kind = "an integer" if isinstance(flags.FLAGS[name].parser, flags.IntegerParser) else "a number"
  below = f" and < {maximum:g}" if maximum is not None else ""
  reason = f" ({why})" if why else ""
  flags.register_validator(
    name, valid, f"--{name} must be {kind} {relation} {minimum:g}{below}{reason}."
  )


def check_output_flag(name: str, *, directory: bool = False, prefix: bool = False) -> None:
  """Registers a check of the path flag `--name` (run while the flags are parsed): when
  given, it can be written (a file: not a folder, in a folder that exists or can be made;
  with `directory`, a folder; with `prefix`, the start of file names), so a tool does not
  fail writing its result after the work.
  Paths with a scheme (gs://...) are left to the storage layer."""

  def valid(value) -> bool:
    message = output_problem(name, value, directory=directory, prefix=prefix)
    if message is None:
      return True
    raise flags.ValidationError(f"{message}. Choose a writable location.")

  flags.register_validator(name, valid)


def output_problem(name: str, value, *, directory: bool = False, prefix: bool = False):
  """Why the path `value` of `--name` cannot be written (`check_output_flag`), or None."""
  if not value or "://" in value:
    return None
  path = os.path.abspath(os.path.expanduser(value))
  if not directory and not prefix and os.path.isdir(path):
    return f"--{name}={value} is a folder; give a file path"
  if directory and os.path.exists(path) and not os.path.isdir(path):
    return f"--{name}={value} is a file; give a folder"
  parent = path if directory else os.path.dirname(path)
  while not os.path.exists(parent):  # the nearest folder that exists will hold the rest
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return f"--{name}={value} cannot be created: {parent} is a file"
  if not os.access(parent, os.W_OK | os.X_OK):
    return f"--{name}={value} cannot be written: {parent} is not writable by this user"
  try:  # what permissions do not tell (a read-only mount, /proc, root): a file made and gone
    import tempfile

    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    return f"--{name}={value} cannot be written: no file can be made in {parent} ({e.strerror})"
  return None


def config_names() -> list[str]:
  """Names of the packaged configs (`--config=<name>`): the `.py` files of configs/."""
  directory = _configs_dir()
  if directory is None:
    return []
  return sorted(n[:-3] for n in os.listdir(directory) if n.endswith(".py") and n[0] != "_")


def _configs_dir() -> str | None:
  spec = importlib.util.find_spec(CONFIGS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def resolve_config(value: str) -> tuple[str, str]:
  """What a `--config` value names: ("record", config.json path) or ("file", .py path).

  A value ending in `.json`, or naming a folder, is a run's record (a work directory
  stands for its config.json); one ending in `.py` (optionally `file.py:argument`, as
  ml_collections allows) is a config file; a bare name is a packaged config.

  Raises:
    ValueError naming the value and the choices when nothing of that name exists.
  """
  path = os.path.expanduser(value)
  if path.endswith(".json") or storage.isdir(path):
    record = storage.join(path, "config.json") if not path.endswith(".json") else path
    if not storage.isfile(record):
      raise ValueError(
        f"{value!r} holds no run record ({record!r} does not exist). A training run's work "
        "directory has a config.json; otherwise pass a config file or a packaged config name."
      )
    return "record", record
  file_part = path.split(":", 1)[0]
  if file_part.endswith(".py") or os.sep in file_part:
    if not os.path.isfile(file_part):
      names = ", ".join(config_names())
      raise ValueError(
        f"No config file {file_part!r} (from {os.getcwd()}). Give the path of a .py config "
        f"file, a run's config.json, or a packaged config by name: {names}."
      )
    return "file", path
  if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) and value in config_names():
    return "file", os.path.join(_configs_dir(), value + ".py")
  names = ", ".join(config_names()) or "(none installed)"
  raise ValueError(
    f"Unknown config {value!r}: not a packaged config ({names}), a .py file or a run's config.json."
  )


class _ConfigParser(flags.ArgumentParser):
  """ml_collections' config-file parser (`inner`), taught names and run records."""

  def __init__(self, inner):
    self._inner = inner

  def parse(self, value):
    from ml_collections import config_dict

    from vdm_jax.runtime import workdir as workdir_lib

    if isinstance(value, config_dict.ConfigDict):
      return value
    kind, path = resolve_config(value)
    if kind == "file":
      return self._inner.parse(path)
    try:
      config = workdir_lib.read_config_record(path)
    except (OSError, ValueError) as e:
      raise ValueError(str(e)) from e
    config.lock()
    return config

  def flag_type(self):
    return self._inner.flag_type()


def define_config(help_string: str, *, required: bool = True):
  """Defines `--config` (with its `--config.<field>=value` overrides); returns the holder.

  `--config` takes a packaged config name, a `.py` file or a run's record
  (`resolve_config`). With `required=False`, a tool that reads a run (`run(...,
  reads_run=True)`) uses the run's record when it is left out.
  """
  from ml_collections import config_flags

  holder = config_flags.DEFINE_config_file("config", None, help_string, lock_config=True)
  flags.FLAGS["config"].parser = _ConfigParser(flags.FLAGS["config"].parser)
  if required:
    flags.mark_flag_as_required("config")
  return holder


class RunFlags:
  """The holders of `--config`, `--workdir` and `--step` of a tool that reads a run."""

  def __init__(self, config, workdir, step):
    self.config, self.workdir, self.step = config, workdir, step

  def load(self):
    """The run (`evaluation.runs.load_run`) that the flags name."""
    from vdm_jax.evaluation import runs

    return runs.load_run(self.workdir.value, step=self.step.value, config=self.config.value)


def define_run_flags(
  workdir_help: str = "Work directory of the training run.",
  *,
  config_help: str = "Default: the run's record. A name, .py file or config.json.",
  required: bool = True,
) -> RunFlags:
  """Defines `--config` (optional: the run's record by default), `--workdir` (required
  unless `required=False`) and `--step` (>= 0; default the latest checkpoint)."""
  config = define_config(config_help, required=False)
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  if required:
    flags.mark_flag_as_required("workdir")
  check_flag_range("step", minimum=0, optional=True)
  return RunFlags(config, workdir, step)


def _flag_value(argv: list[str], name: str) -> str | None:
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
    elif arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _with_record_config(argv: list[str]) -> list[str]:
  """argv with `--config=<workdir>` (the run's record) added when --config is left out."""
  if any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    return argv
  workdir = _flag_value(argv, "workdir")
  overrides = [a for a in argv[1:] if re.match(r"--(no)?config\.", a)]
  if workdir and storage.isfile(storage.join(os.path.expanduser(workdir), "config.json")):
    return [argv[0], f"--config={workdir}", *argv[1:]]
  if overrides:
    where = f"{workdir!r} has no config.json" if workdir else "no --workdir was given"
    _fail(
      f"{overrides[0]} overrides a field of the run's recorded config, but {where}. "
      "Give --workdir of a training run, or the config itself with --config=<name or file>."
    )
  return argv


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def _flag_error(e: Exception, argv: list[str]) -> str:
  text = str(e)
  required = re.match(r"flag --(\w+)=None: Flag --\w+ must have a value other than None", text)
  if required:
    return f"--{required.group(1)} is required (--help lists the flags)."
  return f"{text.rstrip('.')} (--help lists the flags)."


def _config_field_error(e: Exception, argv: list[str]) -> str:
  """One line for a `--config.<field>` override that names no field of the config."""
  text = str(e.args[0]) if e.args else str(e)
  text = text.strip("'\"").replace("\\n", "\n").replace("\\'", "'")
  key, _, suggestion = text.partition("\n")
  key = key.strip("'\"")
  bad = [a.split("=")[0] for a in argv if re.match(r"--(no)?config\.", a)]
  named = [a for a in bad if a.split(".")[-1] == key or f".{key}." in a + "."] or bad[:1]
  where = named[0] if named else "a --config override"
  return f"{where}: the config has no field {key!r}. {suggestion}".strip()


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_flag_error(e, argv))
  except (AttributeError, KeyError) as e:  # ml_collections: an override of an unknown field
    _fail(_config_field_error(e, argv))


def _help_key(module) -> str:
  """absl's key for the flags a module defined (the script path when run as __main__)."""
  return sys.argv[0] if module.__name__ == "__main__" else module.__name__


def print_help(module) -> None:
  """The tool's docstring, then its flags and the shared ones (launch, --import, --config)."""
  print((module.__doc__ or "").strip() + "\n")
  sections = {
    "Flags:": flags.FLAGS.module_help(_help_key(module)),
    "Config, plugins and several processes:": flags.FLAGS.module_help(__name__),
  }
  for title, text in sections.items():
    lines = [line for line in text.splitlines() if line.startswith(" ")]  # not the header
    if lines:
      print("\n".join([title, *lines]))
  if "config" in flags.FLAGS:
    print(
      "  --config.<field>=<value>: override a field of the config, e.g.\n"
      "    --config.train.num_steps=500 (a misspelled field fails with a suggestion)."
    )
  if "config" in flags.FLAGS and config_names():
    print(f"  Packaged configs (--config=<name>): {', '.join(config_names())}.")
  print("  --helpfull: every flag, absl's and JAX's included.")


def reproduce_command(step: int | None = None) -> str:
  """The command line as typed (a console script by its name), with `--step=<step>` added
  when it was left out: the command that computes the same result again."""
  argv = list(_TYPED_ARGV or sys.argv)
  program = argv[0]
  if program.endswith(".py"):
    head = ["python", program]
  else:
    head = [os.path.basename(program)]
  args = argv[1:]
  if step is not None and _flag_value(argv, "step") is None:
    args.append(f"--step={step}")
  return " ".join(shlex.quote(a) for a in head + args)


def run(main, *, reads_run: bool = False, errors=None) -> None:
  """Runs a tool's `main(argv)` the way every vdm_jax command does (module docstring).

  Args:
    main: the tool's main function (its module's docstring is the help text).
    reads_run: the tool reads a trained run: `--config` defaults to its record.
    errors: None, or a function returning (user errors besides the default ones of
      `user_errors_exit`, exceptions with `signum` that mean "stopped by a signal"),
      called only when an exception reaches the tool: so a tool that fails early (a bad
      flag) need not import the module that defines them.
  """
  # First: SIGTERM/SIGINT only recorded from here on, honoured at safe points (`runtime.signals`).
  _signals.install()
  supervisor.attach()  # the work process of a multi-process launch reports to its parent
  from absl import app

  module = sys.modules[main.__module__]
  argv = list(sys.argv)
  _TYPED_ARGV[:] = argv
  if any(a in ("-h", "--help", "-?", "--helpshort") for a in argv[1:]):
    print_help(module)
    sys.exit(0)
  if reads_run:
    argv = _with_record_config(argv)
  sys.argv[:] = argv  # ml_collections reads the config overrides from sys.argv

  def guarded(args):
    with user_errors_exit(errors):
      _signals.check(_BEFORE_WORK)
      _supervise_if_several_processes()
      main(args)
      # A signal during the last stretch (e.g. the final sample grid) is not ignored either.
      _signals.check("after the work was done; everything was written")

  app.run(guarded, argv=argv, flags_parser=_parse_flags)


_BEFORE_WORK = "before the work started; nothing was written"


def _supervise_if_several_processes() -> None:
  """A launch of several processes runs its work in a child process that this one watches
  and exits with (`runtime.supervisor`: a C++ abort after a lost peer becomes one line);
  one process (no launch flags, or --num_processes=1) runs the work itself."""
  if "num_processes" not in flags.FLAGS or not supervisor.enabled():
    return
  count = flags.FLAGS.num_processes
  config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  auto = count is None and bool(config is not None and config.get("distributed", False))
  if not ((count or 0) > 1 or auto):
    return
  index = flags.FLAGS.process_id
  workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None
  workdir = os.path.abspath(os.path.expanduser(workdir)) if workdir else None
  sys.exit(
    supervisor.supervise(
      label=f"[process {index}] " if index is not None else "",
      grace=flags.FLAGS.distributed_timeout,
      advice=lambda: distributed.resume_advice(workdir, count),
    )
  )


def start(argv, launch_flags=None, config=None) -> None:
  """What every entry point does first: refuse stray arguments, quiet the libraries' logs,
  turn on the persistent compilation cache (`enable_compilation_cache`), import the
  plugins (`--import`, added to `config.imports`, and those `config.imports` names), and
  (with `launch_flags` from `define_launch_flags`) start the multi-process runtime."""
  if len(argv) > 1:
    raise ValueError(
      f"Unexpected arguments {argv[1:]}: every option is a --flag=value (--help lists them)."
    )
  quiet_logging()
  enable_compilation_cache()
  _import_plugins(config)
  _signals.check(_BEFORE_WORK)
  if launch_flags is not None:
    _start_processes(launch_flags, config)
    _signals.reassert()  # jax.distributed's preemption notifier takes SIGTERM over
    _signals.check(_BEFORE_WORK)


def _start_processes(launch_flags, config) -> None:
  """Several processes: they agree on the launch (`distributed.rendezvous`) and start."""
  from vdm_jax import __version__

  coordinator, num_processes, process_id, timeout = (f.value for f in launch_flags)
  auto = bool(config is not None and config.get("distributed", False))
  facts = {"vdm_jax": __version__}
  if "workdir" in flags.FLAGS and flags.FLAGS["workdir"].value:
    facts["--workdir"] = storage.resolve(flags.FLAGS["workdir"].value)
  if config is not None:
    facts.update(distributed.config_fingerprint(config))
  initialize_distributed(
    coordinator, num_processes, process_id, auto=auto, timeout=timeout, facts=facts
  )


def _import_plugins(config) -> None:
  from vdm_jax import config as config_lib

  flagged = [name for value in _IMPORTS.value for name in value.split(",") if name.strip()]
  if config is not None:
    names = config_lib.plugin_modules(config)
    names += [n.strip() for n in flagged if n.strip() not in names]
    config.imports = ",".join(names)
    config_lib.import_plugins(config)
  elif flagged:
    import ml_collections

    config_lib.import_plugins(ml_collections.ConfigDict({"imports": ",".join(flagged)}))


@contextlib.contextmanager
def user_errors_exit(errors=None):
  """Prints a user error as one paragraph, prefixed with the process index when there are
  several, and exits 1; a signal honoured at a safe point (`runtime.signals.Stopped`, e.g.
  `training.TrainingInterrupted`, or another "interrupted" exception with `signum`) exits
  128 + its signal number (the shell's code for "ended by this signal") after its one-line
  message; a KeyboardInterrupt (without `run`'s handlers) exits 130 with one line.

  User errors are those whose messages say what to do: the one list `_errors.USER_ERRORS`
  (ValueError for bad values and refused configs, FileNotFoundError and NotADirectoryError,
  PermissionError, a missing optional extra, and every `_errors.UserError`: a locked work
  directory, a damaged checkpoint, a failed save, a diverged run), absl's UsageError, and
  those of `errors` (a function returning (more user errors, interrupted errors), called
  only if something is raised). Anything else is a bug and keeps its traceback.
  """
  from absl import app

  from vdm_jax._errors import USER_ERRORS

  known = (*USER_ERRORS, app.UsageError)
  try:
    yield
  except _signals.Stopped as e:  # a signal honoured at a safe point (its message is one line)
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:
    print("Interrupted (Ctrl-C).", file=sys.stderr)
    sys.exit(130)
  except Exception as e:
    # Several processes: a lost peer is one line; every error ends the process at once
    # (`_exit`), since JAX's exit handler would wait for the others (then abort in C++).
    several = distributed.is_multiprocess() and getattr(e, "signum", None) is None
    distributed.exit_if_lost_peer(e)
    extra, interrupted = errors() if errors is not None else ((), ())
    if isinstance(e, interrupted):
      print(e, file=sys.stderr)
      sys.exit(128 + e.signum)
    if not isinstance(e, known + tuple(extra)):
      if several:
        traceback.print_exc()
        distributed.exit_now(1)
      raise
    import jax

    where = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
    _exit(several, f"{where}error: {e}")


def _exit(several: bool, message: str) -> None:
  """`sys.exit(message)`; with several processes, print it and end the process at once."""
  if several:
    print(message, file=sys.stderr)
    distributed.exit_now(1)
  sys.exit(message)
