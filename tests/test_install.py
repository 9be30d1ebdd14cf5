"""Packaging: what `pip install vdm_jax` pulls and imports, the lock, the typed public API."""

import importlib
import importlib.metadata
import inspect
import json
import pathlib
import pkgutil
import re
import subprocess
import sys
import tomllib
import typing

import pytest
from packaging.requirements import Requirement

import vdm_jax

REPO = pathlib.Path(__file__).parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PURE = (
  "schedules",
  "gaussian",
  "elbo",
  "times",
  "predictions",
  "vae_elbo",
  "hvae",
  "sampling",
  "testing",
)
# What the pure maths must not import: the training stack and the optional extras.
HEAVY = (
  "flax",
  "optax",
  "orbax",
  "grain",
  "tensorflow_datasets",
  "tensorflow",
  "ml_collections",
  "absl.flags",
  "diffrax",
  "matplotlib",
  "tensorboardX",
  "sklearn",
)


def test_pure_maths_imports_no_training_stack():
  code = (
    "import json, sys\n"
    "import vdm_jax\n"
    "from vdm_jax import elbo, gaussian, hvae, schedules, testing\n"
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_core_dependencies_are_jax_and_numpy_ranges():
  core = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
  assert sorted(r.name for r in core) == ["jax", "numpy"]
  extras = PYPROJECT["project"]["optional-dependencies"]
  for req in [*core, *(Requirement(r) for reqs in extras.values() for r in reqs)]:
    assert all(s.operator != "==" for s in req.specifier), f"{req} is a pin, not a range"
  for accelerator in ("cuda12", "cuda13", "tpu"):
    (req,) = (Requirement(r) for r in extras[accelerator])
    assert req.name == "jax" and req.extras == {accelerator}


def _lock() -> dict[str, str]:
  pins = {}
  for line in (REPO / "requirements" / "lock-py311.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
      name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line).groups()
      pins[re.sub(r"[-_.]+", "-", name).lower()] = version
  return pins


def test_lock_pins_versions_that_satisfy_pyproject():
  """The lock is current: every requirement of the extras it is built from is pinned to a
  version inside its range (run scripts/lock.sh after editing pyproject.toml)."""
  pins = _lock()
  extras = PYPROJECT["project"]["optional-dependencies"]
  reqs = PYPROJECT["project"]["dependencies"] + [
    r for e in ("train", "ode", "plots", "tensorboard", "test") for r in extras[e]
  ]
  for req in map(Requirement, reqs):
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    assert name in pins, f"{req.name} is not in requirements/lock-py311.txt"
    assert req.specifier.contains(pins[name]), f"lock pins {name}=={pins[name]}, not {req}"


def test_version_is_written_once():
  assert PYPROJECT["project"]["dynamic"] == ["version"]
  assert "version" not in PYPROJECT["project"]
  assert importlib.metadata.version("vdm_jax") == vdm_jax.__version__
  changelog = (REPO / "CHANGELOG.md").read_text()
  assert re.search(r"^## \[?([0-9][^\]\s]*)", changelog, re.M).group(1) == vdm_jax.__version__


def test_license_and_typed_marker_are_shipped():
  assert "Apache License" in (REPO / "LICENSE").read_text()
  assert PYPROJECT["project"]["license"] == "Apache-2.0"
  assert (REPO / "vdm_jax" / "py.typed").exists()
  assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["vdm_jax"]


def _public_modules():
  for info in pkgutil.walk_packages(vdm_jax.__path__, "vdm_jax."):
    if not any(part.startswith("_") for part in info.name.split(".")):
      yield info.name


def test_every_public_module_declares_all():
  pytest.importorskip("flax", reason="the training modules need the `train` extra")
  modules = list(_public_modules())
  assert "vdm_jax.elbo" in modules and "vdm_jax.training.loop" in modules
  for name in modules:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names {missing}, which it does not define"


def _callables(module):
  for name in module.__all__:
    obj = getattr(module, name)
    if inspect.isfunction(obj):
      yield f"{module.__name__}.{name}", obj
    elif inspect.isclass(obj) and not typing.is_typeddict(obj):
      for attr, member in vars(obj).items():
        if inspect.isfunction(member) and (not attr.startswith("_") or attr == "__call__"):
          yield f"{module.__name__}.{name}.{attr}", member


@pytest.mark.parametrize("module_name", PURE)
def test_pure_maths_is_fully_typed(module_name):
  """Every public function and method has annotations that resolve, parameters and return."""
  module = importlib.import_module(f"vdm_jax.{module_name}")
  checked = 0
  for qualname, fn in _callables(module):
    hints = typing.get_type_hints(fn)  # raises if an annotation names nothing
    params = [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]
    untyped = [p.name for p in params if p.name not in hints]
    assert not untyped, f"{qualname}: parameters {untyped} have no type"
    assert "return" in hints, f"{qualname} has no return type"
    checked += 1
  assert checked >= 1


@pytest.mark.parametrize("module_name", [*PURE, "models/vdm", "models/vae"])
def test_modules_have_docstring_examples_that_the_suite_runs(module_name):
  path = REPO / "vdm_jax" / f"{module_name}.py"
  assert ">>> " in path.read_text()
  conftest = (REPO / "conftest.py").read_text()
  assert f"vdm_jax/{module_name}.py" not in conftest  # not in collect_ignore
  assert "--doctest-modules" in PYPROJECT["tool"]["pytest"]["ini_options"]["addopts"]
  assert "vdm_jax" in PYPROJECT["tool"]["pytest"]["ini_options"]["testpaths"]


@pytest.mark.slow  # mypy from cold: about a minute under load
def test_pure_maths_passes_mypy(tmp_path):
  """The annotations hold: mypy checks the pure modules ([tool.mypy] in pyproject.toml)."""
  pytest.importorskip("mypy")
  proc = subprocess.run(
    [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
