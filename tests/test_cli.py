"""The command line as a user meets it: the run is the unit (evaluate and sample from a work
directory alone), --config by name, file or record, plugins, installed console scripts, the
format-1 work directory of tests/fixtures, and a catalogue of mistakes that each end in one
clear message, exit status 1 and nothing written."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO

from vdm_jax import _cli, _entry
from vdm_jax.runtime import checkpoints
from vdm_jax.runtime import workdir as workdir_lib

FIXTURE = REPO / "tests" / "fixtures" / "run_format1"
# The fixture's model, as overrides of the packaged digits config.
FIXTURE_FLAGS = (
  "--config.model.n_layer=1",
  "--config.model.n_embd=8",
  "--config.model.norm_groups=4",
  "--config.eval.batch_size=64",
)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  """A data_dir with the digits dataset built (every CLI call here points at it)."""
  import ml_collections

  from vdm_jax import data

  path = tmp_path_factory.mktemp("tfds")
  data.prepare(ml_collections.ConfigDict({"name": "digits", "data_dir": str(path)}))
  return path


def fixture_copy(dest: pathlib.Path) -> pathlib.Path:
  shutil.copytree(FIXTURE, dest)
  return dest


def cli(script: str, *args, cwd=None, env=None) -> subprocess.CompletedProcess:
  command = [sys.executable, str(REPO / "scripts" / f"{script}.py"), *map(str, args)]
  environment = dict(os.environ, VDM_JAX_COMPILATION_CACHE_DIR="none") | (env or {})
  return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=environment)


def cli_many(calls, *, cwd, env=None) -> list[dict]:
  """Runs each (script, args) of `calls` as `cli` would, from one process that imports the
  stack once and forks per call (tests/_forkcli.py): the same exit status, stdout and
  stderr, without paying JAX's import for every call. Returns dicts with `returncode`,
  `stdout` and `stderr`, in order."""
  cases = [[str(REPO / "scripts" / f"{script}.py"), list(map(str, args))] for script, args in calls]
  environment = dict(os.environ, VDM_JAX_COMPILATION_CACHE_DIR="none")
  environment |= {k: str(v) for k, v in (env or {}).items()}
  server = subprocess.run(
    [sys.executable, str(REPO / "tests" / "_forkcli.py")],
    input=json.dumps(cases),
    capture_output=True,
    text=True,
    cwd=cwd,
    env=environment,
  )
  assert server.returncode == 0, server.stderr[-3000:]
  return json.loads(server.stdout)


def bpd_of(proc: subprocess.CompletedProcess) -> float:
  line = [line for line in proc.stdout.splitlines() if line.strip().startswith("bits/dim")][0]
  return float(line.split()[1])


# ---------------------------------------------------------------------------
# The record is the config: evaluate and sample with --workdir alone.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_format1_run_evaluates_samples_and_resumes_from_its_workdir_alone(tmp_path, digits_dir):
  run = fixture_copy(tmp_path / "run")
  data_flag = f"--config.data.data_dir={digits_dir}"
  cache = {"VDM_JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache")}  # shared by the calls
  alone = cli(
    "evaluate", f"--workdir={run}", data_flag, "--output", tmp_path / "alone.json", env=cache
  )
  assert alone.returncode == 0, alone.stderr
  given = cli(
    "evaluate",
    "--config=digits",
    f"--workdir={run}",
    data_flag,
    *FIXTURE_FLAGS,
    "--output",
    tmp_path / "given.json",
    env=cache,
  )
  assert given.returncode == 0, given.stderr
  assert abs(bpd_of(alone) - bpd_of(given)) < 1e-6
  assert 4 < bpd_of(alone) < 20  # 4 steps from initialisation: far from a uniform 4.09
  record = json.loads((tmp_path / "alone.json").read_text())
  assert record["checkpoint_step"] == 4 and record["model_dtype"] == "float32"
  assert record["seed"] == 1 and record["pass_se"] is None  # the run's: config.seed + 1
  assert "reproduce: python " in alone.stdout and "--step=4" in alone.stdout
  assert "read only" not in alone.stderr + given.stderr

  sampled = cli(
    "sample", f"--workdir={run}", data_flag, "--num_samples=4", "--num_steps=5", "--output",
    tmp_path / "s", env=cache,
  )  # fmt: skip
  assert sampled.returncode == 0, sampled.stderr
  assert np.load(tmp_path / "s.npz")["samples"].shape == (4, 8, 8, 1)

  # Resume the format-1 run with its own record as the config: 2 more steps.
  resumed = cli(
    "train", f"--config={run}/config.json", f"--workdir={run}", data_flag,
    "--config.train.num_steps=6", env=cache,
  )  # fmt: skip
  assert resumed.returncode == 0, resumed.stderr
  assert (run / "checkpoints" / "6").is_dir()
  assert json.loads((run / "config.json").read_text())[workdir_lib.FORMAT_KEY] == 2
  assert json.loads((run / "checksums" / "6.json").read_text())[workdir_lib.FORMAT_KEY] == 2
  assert checkpoints.format_version(str(run), 4) == 1  # the old step stays as written


def test_config_checked_against_the_record_field_by_field():
  from vdm_jax import data
  from vdm_jax.evaluation import check_against_record

  record = workdir_lib.read_config_record(str(FIXTURE / "config.json"))
  same = record.copy_and_resolve_references()
  assert check_against_record(record, same, "run") == {}
  # What may differ: evaluation and training options, where data live, the compute dtype.
  allowed = record.copy_and_resolve_references()
  allowed.eval.batch_size, allowed.train.num_steps, allowed.optim.learning_rate = 8, 9, 1.0
  allowed.data.data_dir, allowed.model.dtype, allowed.seed = "/elsewhere", "bfloat16", 3
  assert set(check_against_record(record, allowed, "run")) == {
    "eval.batch_size",
    "train.num_steps",
    "optim.learning_rate",
    "data.data_dir",
    "model.dtype",
    "seed",
  }
  refused = {
    "model.kind": "vae",
    "model.denoiser": "mlp",
    "model.prediction": "x",
    "model.n_layer": 2,
    "model.n_embd": 16,
    "model.norm_groups": 8,
    "model.dropout": 0.2,
    "model.fourier_features": False,
    "model.attention_everywhere": True,
    "model.scan_layers": True,
    "model.mlp_hidden": 8,
    "schedule.kind": "fixed_linear",
    "schedule.gamma_min": -10.0,
    "schedule.gamma_max": 6.0,
    "schedule.objective": "variance",
    "loss.num_steps": 10,
    "data.name": "photos",
  }
  for field, value in refused.items():
    config = record.copy_and_resolve_references()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=rf"config\.{field}: recorded .*, given") as e:
      check_against_record(record, config, "run")
    assert "Leave out --config" in str(e.value)
  # Another dataset of the same shape and vocabulary is a real use (out-of-distribution).
  data.register(data.Dataset("digits_twin", ("train", "test"), None, None, (8, 8, 1), 17))
  try:
    twin = record.copy_and_resolve_references()
    twin.data.name = "digits_twin"
    assert check_against_record(record, twin, "run") == {"data.name": ("digits", "digits_twin")}
  finally:
    data.DATASETS.unregister("digits_twin")


def test_run_records_read_back_with_versions_and_clear_errors(tmp_path):
  record = workdir_lib.read_config_record(str(FIXTURE))  # format 1: no version recorded
  assert record.model.n_embd == 8 and record.imports == ""  # a later field: its default
  newer = json.loads((FIXTURE / "config.json").read_text()) | {workdir_lib.FORMAT_KEY: 99}
  (tmp_path / "config.json").write_text(json.dumps(newer))
  with pytest.raises(workdir_lib.FormatVersionError, match="newer vdm_jax. Upgrade"):
    workdir_lib.read_config_record(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"config.json cannot be read .*config_history"):
    workdir_lib.read_config_record(str(tmp_path))
  run = fixture_copy(tmp_path / "run")
  sums = json.loads((run / "checksums" / "4.json").read_text()) | {workdir_lib.FORMAT_KEY: 7}
  (run / "checksums" / "4.json").write_text(json.dumps(sums))
  with pytest.raises(workdir_lib.FormatVersionError, match="step 4 .* format version 7"):
    checkpoints.format_version(str(run), 4)


def test_load_run_readme_example(tmp_path, digits_dir, monkeypatch):
  import re

  text = (REPO / "README.md").read_text()
  block = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "load_run" in b][0]
  run = fixture_copy(tmp_path / "runs" / "digits")
  record = json.loads((run / "config.json").read_text())
  record["data"]["data_dir"] = str(digits_dir)  # the fixture was made with another data_dir
  (run / "config.json").write_text(json.dumps(record))
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(block, namespace)
  assert namespace["run"].step == 4 and namespace["run"].config.model.n_embd == 8
  assert np.isfinite(float(namespace["bpd"]))


# ---------------------------------------------------------------------------
# --config by name, file or record; help; the console scripts.
# ---------------------------------------------------------------------------


def test_config_values_resolve_to_names_files_and_records(tmp_path):
  assert {"digits", "photos", "cifar10", "toy2d", "vae_digits"} <= set(_cli.config_names())
  kind, path = _cli.resolve_config("digits")
  assert kind == "file" and path.endswith("digits.py") and os.path.isfile(path)
  assert _cli.resolve_config(str(FIXTURE)) == ("record", str(FIXTURE / "config.json"))
  assert _cli.resolve_config(str(FIXTURE / "config.json"))[0] == "record"
  for bad, message in [
    ("digts", "Unknown config 'digts'"),
    ("nowhere/digits.py", "No config file 'nowhere/digits.py'"),
    (str(tmp_path / "x.json"), "holds no run record"),
    (str(tmp_path), "holds no run record"),
  ]:
    with pytest.raises(ValueError, match=message):
      _cli.resolve_config(bad)


def test_output_locations_are_checked_before_the_work(tmp_path, monkeypatch):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  problem = _cli.output_problem
  assert problem("output", str(tmp_path / "new" / "deeper" / "x.json")) is None  # made later
  assert problem("output", None) is None and problem("output", "gs://bucket/x.json") is None
  assert problem("output", str(tmp_path)) == f"--output={tmp_path} is a folder; give a file path"
  assert problem("output", str(tmp_path), prefix=True) is None  # <prefix>.npz beside it
  assert problem("output_dir", str(a_file), directory=True).endswith("is a file; give a folder")
  assert problem("output", f"{a_file}/x.json").endswith(f"cannot be created: {a_file} is a file")
  # /proc passes the permission test for root, but holds no new files.
  assert "cannot be written: no file can be made in /proc (" in problem("output", "/proc/x/y.json")
  # A folder this user cannot write (tests may run as root, for whom permissions do not
  # apply: os.access answers as for another user).
  monkeypatch.setattr(os, "access", lambda path, mode: path != str(tmp_path))
  assert problem("output", str(tmp_path / "sub" / "x.json")) == (
    f"--output={tmp_path}/sub/x.json cannot be written: {tmp_path} is not writable by this user"
  )


def test_a_bare_install_names_the_extra(monkeypatch):
  monkeypatch.setattr(_entry, "_NEEDED", ("absl", "no_such_module_xyz", "a_missing.pkg"))
  with pytest.raises(SystemExit) as e:
    _entry.evaluate()
  message = str(e.value.code)
  assert "vdm-evaluate needs the training stack" in message
  assert "no_such_module_xyz, a_missing.pkg" in message and "pip install 'vdm_jax[all]'" in message


PLUGIN = """
import flax.linen as nn
from vdm_jax import models


class PluginDenoiser(nn.Module):
  @nn.compact
  def __call__(self, z, gamma, *, train=False, batch=None):
    return nn.Conv(z.shape[-1], (3, 3))(z)


models.DENOISERS.register("plugin_conv", lambda config, info: PluginDenoiser())
"""
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")
TOOLS = {
  "train": "--workdir",
  "evaluate": "exact_time_sum",
  "sample": "--num_samples",
  "import-images": "--images",
  "import-vdm-checkpoint": "--gamma_min",
  "benchmark": "memory_only",
  "codec-table": "--eval_json",
  "certify": "--max_log2_steps",
  "elbo-forms": "share_denoiser",
  "time-variance": "--reps",
}


@pytest.mark.slow
def test_installed_console_scripts_work_from_an_empty_directory_with_a_plugin(tmp_path, digits_dir):
  """A non-editable install (a wheel, into its own folder) runs from a folder holding only
  a plugin module: train with --import, then evaluate and sample with --workdir alone."""
  wheel_dir, target, cwd = tmp_path / "wheel", tmp_path / "site", tmp_path / "cwd"
  cwd.mkdir()
  source = tmp_path / "source"  # a copy: setuptools would leave build/ in the clone
  source.mkdir()
  for name in ["pyproject.toml", "README.md", "LICENSE"]:
    shutil.copy(REPO / name, source / name)
  for name in ["vdm_jax", "scripts", "configs"]:
    shutil.copytree(REPO / name, source / name, ignore=IGNORE)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run([*pip, "wheel", "--no-deps", "-w", wheel_dir, source], check=True)
  wheel = next(wheel_dir.glob("vdm_jax-*.whl"))
  subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
  env = dict(os.environ, PYTHONPATH=str(target), VDM_JAX_COMPILATION_CACHE_DIR=str(tmp_path / "c"))
  bin_dir = target / "bin"

  def tool(name, *args):
    return subprocess.run(
      [sys.executable, str(bin_dir / f"vdm-{name}"), *map(str, args)],
      capture_output=True,
      text=True,
      cwd=cwd,
      env=env,
    )

  where = subprocess.run(
    [sys.executable, "-c", "import vdm_jax, vdm_jax_configs; print(vdm_jax.__file__)"],
    capture_output=True, text=True, cwd=cwd, env=env, check=True,
  )  # fmt: skip
  assert where.stdout.strip().startswith(str(target))  # the installed copy, not the clone
  for name, flag in TOOLS.items():
    shown = tool(name, "--help")
    assert shown.returncode == 0 and flag in shown.stdout, (name, shown.stdout, shown.stderr)
    assert "Try --helpfull" not in shown.stdout
  assert "--coordinator_address" in tool("train", "--help").stdout  # launch flags shown

  (cwd / "my_plugin.py").write_text(PLUGIN)
  trained = tool(
    "train", "--config=digits", "--workdir=run", "--import=my_plugin",
    f"--config.data.data_dir={digits_dir}", "--config.model.denoiser=plugin_conv",
    "--config.train.num_steps=2", "--config.train.batch_size=16", "--config.train.log_every=1",
    "--config.train.num_samples=0", "--config.eval.batch_size=64",
  )  # fmt: skip
  assert trained.returncode == 0, trained.stderr
  assert json.loads((cwd / "run" / "config.json").read_text())["imports"] == "my_plugin"
  evaluated = tool("evaluate", "--workdir=run")
  assert evaluated.returncode == 0, evaluated.stderr
  assert "reproduce: vdm-evaluate --workdir=run --step=2" in evaluated.stdout
  final = json.loads((cwd / "run" / "final_metrics.json").read_text())
  assert np.isfinite(bpd_of(evaluated)) and final["step"] == 2
  sampled = tool("sample", "--workdir=run", "--num_samples=2", "--num_steps=3")
  assert sampled.returncode == 0, sampled.stderr
  assert len(list((cwd / "run").glob("samples_step2_*.png"))) == 1


# ---------------------------------------------------------------------------
# The catalogue: every mistake is one paragraph, exit 1, no traceback, nothing written.
# ---------------------------------------------------------------------------


def _snapshot(root: pathlib.Path) -> dict:
  return {
    str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
    for p in root.rglob("*")
    if p.is_file()
  }


def test_catalogue_of_mistakes(tmp_path, digits_dir):
  run = fixture_copy(tmp_path / "run")
  # The fixture's data_dir does not exist here: point the record at the prepared one.
  record = json.loads((run / "config.json").read_text())
  record["data"]["data_dir"] = str(digits_dir)
  (run / "config.json").write_text(json.dumps(record))
  empty = tmp_path / "empty"
  empty.mkdir()
  no_checkpoints = tmp_path / "no_checkpoints"
  no_checkpoints.mkdir()
  shutil.copy(run / "config.json", no_checkpoints / "config.json")
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  not_images = tmp_path / "not_images"
  not_images.mkdir()
  (not_images / "notes.txt").write_text("x")
  images = tmp_path / "images"
  images.mkdir()
  from PIL import Image

  for i in range(3):
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
  new = tmp_path / "new_run"  # must never be created
  train = ["--config=digits", f"--workdir={new}", f"--config.data.data_dir={digits_dir}"]
  w = f"--workdir={run}"
  cases = [
    # train: config names, files, fields, values, launch flags, plugins, stray arguments
    ("train", [f"--workdir={new}"], "--config is required"),
    ("train", ["--config=digts", f"--workdir={new}"], "Unknown config 'digts'"),
    ("train", ["--config=nowhere/x.py", f"--workdir={new}"], "No config file 'nowhere/x.py'"),
    ("train", [f"--config={tmp_path}/none.json", f"--workdir={new}"], "holds no run record"),
    ("train", [*train, "--config.model.n_emdb=3"], 'Did you mean "n_embd"'),
    ("train", [*train, "--config.modl.n_embd=3"], "--config.modl.n_embd"),
    ("train", [*train, "--config.model.n_embd=abc"], "--config.model.n_embd=abc"),
    ("train", [*train, "--config.optim.learning_rate=nan"], "config.optim.learning_rate"),
    ("train", [*train, "--config.optim.learning_rate=inf"], "config.optim.learning_rate"),
    ("train", [*train, "--config.optim.grad_clip=nan"], "config.optim.grad_clip"),
    ("train", [*train, "--config.train.batch_size=0"], "config.train.batch_size"),
    ("train", [*train, "--config.train.batch_size=1000000"], "668 times over"),
    ("train", [*train, "--config.train.num_steps=10000000000"], "beyond the int32 counts"),
    ("train", [*train, "--config.optim.learning_rate=1e39"], "beyond the float32 range"),
    ("train", [*train, "--config.optim.eps=1e-50"], "below the smallest normal float32"),
    ("train", [*train, "--config.schedule.gamma_max=1e39"], "config.schedule.gamma_max=1e+39"),
    ("train", [*train, "--config.schedule.gamma_min=-100"], "outside [-88.72, 88.72]"),
    ("train", [*train, "--config.model.norm_groups=5"], "divisible"),
    ("train", [*train, "--config.eval.split=valid"], "config.eval.split='valid'"),
    ("train", [*train, "--config.data.name=nosuch"], "Unknown dataset data.name='nosuch'"),
    ("train", [*train, "--import=no_such_plugin_xyz"], "'no_such_plugin_xyz'"),
    ("train", [*train, "--coordinator_address=localhost:1"], "--num_processes, --process_id"),
    (
      "train",
      [*train, "--coordinator_address=localhost:1", "--num_processes=2", "--process_id=5"],
      "--process_id=5",
    ),
    ("train", [*train, "--config.distributed=True"], "asks JAX to detect a cluster"),
    ("train", [*train, "stray"], "Unexpected arguments ['stray']"),
    ("train", [*train, "--worekdir=x"], "worekdir"),
    ("train", ["--config=digits", f"--workdir={a_file}"], "is a file"),
    ("train", ["--config=digits", f"--workdir={a_file}/run"], "cannot be created"),
    # evaluate: work directories, steps, splits, methods, flags, configs that do not match
    ("evaluate", [], "--workdir is required"),
    ("evaluate", [f"--workdir={tmp_path}/nowhere"], "No work directory"),
    ("evaluate", [f"--workdir={a_file}"], "is a file"),
    ("evaluate", [f"--workdir={empty}"], "has no config.json"),
    ("evaluate", [f"--workdir={no_checkpoints}"], "No checkpoints in"),
    ("evaluate", [w, "--step=999"], "No checkpoint for step 999"),
    ("evaluate", [w, "--split=valid"], "Unknown split 'valid'"),
    ("evaluate", [w, "--method=bogus"], "--method"),
    ("evaluate", [w, "--passes=0"], "--passes must be an integer >= 1"),
    ("evaluate", [w, "--batch_size=0"], "--batch_size must be an integer >= 1"),
    ("evaluate", [w, "--ode_tol=-1"], "--ode_tol must be a number >= 1.19209e-07 and < 1"),
    ("evaluate", [w, "--ode_tol=nan"], "--ode_tol must be a number >= 1.19209e-07 and < 1"),
    ("evaluate", [w, "--method=ode", "--ode_tol=0"], "--ode_tol must be a number >= 1.19209e-07"),
    ("evaluate", [w, "--method=ode", "--ode_tol=1e-30"], "(float32's epsilon to 1)"),
    ("evaluate", [w, "--ode_tol=2"], "--ode_tol must be a number >= 1.19209e-07 and < 1"),
    ("evaluate", [w, "--num_bins=0"], "--num_bins must be an integer >= 1"),
    ("evaluate", [w, f"--output={empty}"], "is a folder; give a file path"),
    ("evaluate", [w, f"--output={a_file}/x.json"], "cannot be created: "),
    ("evaluate", [w, "--config.model.prediction=x"], "config.model.prediction: recorded 'eps'"),
    ("evaluate", [w, "--config.model.n_embd=16"], "config.model.n_embd: recorded 8, given 16"),
    ("evaluate", [w, "--config=digits"], "config.model.n_embd: recorded 8, given 32"),
    ("evaluate", [w, "--config.data.name=photos"], "config.data.name: recorded 'digits (8x8x1"),
    ("evaluate", [w, "--config.loss.num_steps=10"], "pass --num_steps=T"),
    ("evaluate", [f"--workdir={empty}", "--config.eval.batch_size=8"], "has no config.json"),
    # sample, diagnostics
    ("sample", [w, "--num_samples=0"], "--num_samples must be an integer >= 1"),
    ("sample", [w, f"--output={a_file}/s"], "cannot be created: "),
    ("sample", [w, "--config.model.n_layer=3"], "config.model.n_layer: recorded 1"),
    ("time_variance", [w, "--reps=0"], "--reps must be an integer >= 1"),
    ("elbo_forms", ["--target=checkpoint"], "needs the training run's --workdir"),
    ("elbo_forms", ["--target=bogus"], "--target"),
    ("benchmark", ["--config=digits", "--steps=0"], "--steps must be an integer >= 1"),
    ("benchmark", [], "--config is required"),
    ("certify", ["--num_examples=0"], "--num_examples must be an integer >= 1"),
    ("certify", [f"--output_dir={a_file}"], "is a file; give a folder"),
    ("benchmark", ["--config=digits", "--warmup=-1"], "--warmup must be an integer >= 0"),
    ("time_variance", [w, f"--output={empty}"], "is a folder; give a file path"),
    ("elbo_forms", [f"--output={a_file}/x.json"], "cannot be created: "),
    # data tools
    ("import_images", [f"--images={tmp_path}/nowhere", "--name=x"], "does not exist"),
    ("import_images", [f"--images={empty}", "--name=x", f"--data_dir={tmp_path}/t"], "is empty"),
    ("import_images", [f"--images={not_images}", "--name=x"], "none PNG/JPEG"),
    ("import_images", [f"--images={images}", "--name=beans"], "'beans' is taken"),
    ("import_images", [f"--images={images}"], "--name is required"),
    (
      "codec_table",
      [f"--eval_json={tmp_path}/none.json", f"--data_dir={digits_dir}", "--name=digits"],
      "none.json",
    ),  # fmt: skip
    ("codec_table", ["--name=nosuch", f"--data_dir={tmp_path}/t"], "Unknown dataset"),
    ("codec_table", [f"--output={empty}"], "is a folder; give a file path"),
  ]
  assert len(cases) >= 40
  home = tmp_path / "home"
  home.mkdir()
  before = _snapshot(tmp_path)

  procs = cli_many([(script, args) for script, args, _ in cases], cwd=empty, env={"HOME": home})
  problems = []
  for (script, args, expected), proc in zip(cases, procs, strict=True):
    err = proc["stderr"]
    if proc["returncode"] != 1 or "Traceback" in err + proc["stdout"] or expected not in err:
      problems.append(f"{script} {' '.join(args)}: exit {proc['returncode']}\n{err[-1500:]}")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    if len(lines) != 1:
      problems.append(f"{script} {' '.join(args)}: not one error paragraph:\n{err[-1500:]}")
  assert not problems, "\n\n".join(problems)
  assert _snapshot(tmp_path) == before  # nothing written: no workdir, JSON, cache or data
  assert not new.exists()
