"""The package's layers (README "Layout"): no cycles, no import up a layer, and
pure maths that needs nothing but jax and numpy. Parses the source (ast); imports nothing."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "vdm_jax"

# Layer of every module (a sub-package's modules share its layer). A module may import
# only from its own layer or below; within a layer the module graph must have no cycle.
LAYERS = {
  "vdm_jax._arith": 0,
  "vdm_jax._checks": 0,
  "vdm_jax._deps": 0,
  "vdm_jax._errors": 0,
  "vdm_jax._registry": 0,
  "vdm_jax.streams": 0,
  "vdm_jax.schedules": 1,
  "vdm_jax.gaussian": 1,
  "vdm_jax.elbo": 1,
  "vdm_jax.times": 1,
  "vdm_jax.predictions": 1,
  "vdm_jax.vae_elbo": 1,
  "vdm_jax.hvae": 1,
  "vdm_jax.sampling": 1,
  "vdm_jax.testing": 1,
  "vdm_jax": 1,  # __init__ only (re-exports the pure maths), not every module below it
  "vdm_jax.models": 2,
  "vdm_jax.data": 3,
  "vdm_jax.config": 4,
  "vdm_jax.runtime": 4,
  "vdm_jax.evaluation": 5,
  "vdm_jax.training": 6,
  "vdm_jax._cli": 7,
  "vdm_jax._entry": 7,
}
PURE_MATHS_THIRD_PARTY = {"jax", "numpy"}
PURE = {name for name, layer in LAYERS.items() if layer <= 1}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int | None:
  """The layer of `module`: its own entry, or its sub-package's; None if it has neither (a
  new top-level module needs an entry: the package's own is not a default for them)."""
  owners = [k for k in LAYERS if module == k or (k != "vdm_jax" and module.startswith(k + "."))]
  return LAYERS[max(owners, key=len)] if owners else None


def _imports(path: pathlib.Path, module: str):
  """(imported module, line) for every import of the file, at any depth (local ones too)."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, node.lineno
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base])
      for alias in node.names:
        full = f"{base}.{alias.name}"
        # `from vdm_jax import elbo` imports the module vdm_jax.elbo.
        if (PACKAGE.parent / (full.replace(".", "/") + ".py")).exists() or (
          PACKAGE.parent / full.replace(".", "/")
        ).is_dir():
          yield full, node.lineno
        else:
          yield base, node.lineno


def _graph():
  graph = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    module = _module_name(path)
    graph[module] = [(m, line) for m, line in _imports(path, module)]
  return graph


GRAPH = _graph()


def test_every_module_has_a_layer():
  missing = [module for module in GRAPH if _layer(module) is None]
  assert not missing, f"modules without an entry in LAYERS: {missing}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_goes_up_a_layer(module):
  assert _layer(module) is not None, f"{module} has no entry in LAYERS"
  up = [
    f"{target} (layer {_layer(target)}), line {line}"
    for target, line in GRAPH[module]
    if target.startswith("vdm_jax") and (_layer(target) or 0) > _layer(module)
  ]
  assert not up, f"{module} (layer {_layer(module)}) imports a higher layer: {up}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if (_layer(m) or 0) <= 1))
def test_pure_maths_imports_only_jax_and_numpy(module):
  bad = [
    f"{target}, line {line}"
    for target, line in GRAPH[module]
    if not target.startswith("vdm_jax")
    and target.split(".")[0] not in PURE_MATHS_THIRD_PARTY
    and target.split(".")[0] not in {"__future__", "math", "dataclasses", "typing", "collections"}
    and target.split(".")[0] not in {"importlib", "types", "functools"}
  ]
  assert not bad, f"{module} is pure maths but imports {bad}"


def _cycles(graph) -> list[list[str]]:
  """Every cycle a depth-first search meets in {module: [(imported, line)]}."""
  edges = {m: {t for t, _ in targets if t in graph and t != m} for m, targets in graph.items()}
  state, stack, found = {}, [], []

  def visit(m):
    state[m] = "active"
    stack.append(m)
    for t in sorted(edges[m]):
      if state.get(t) == "active":
        found.append(stack[stack.index(t) :] + [t])
      elif t not in state:
        visit(t)
    stack.pop()
    state[m] = "done"

  for m in sorted(edges):
    if m not in state:
      visit(m)
  return found


def test_no_import_cycles():
  cycles = _cycles(GRAPH)
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_catch_what_they_are_for():
  # A cycle through a lazy import, and an upward import, in a made-up graph.
  fake = {"a.x": [("a.y", 3)], "a.y": [("a.x", 9)], "a.z": []}
  assert _cycles(fake) == [["a.x", "a.y", "a.x"]]
  # The real graph has the edges it should: the trainer imports evaluation (layer 6 -> 5).
  assert any(t == "vdm_jax.evaluation.bpd" for t, _ in GRAPH["vdm_jax.training.loop"])
  assert _layer("vdm_jax.training.loop") > _layer("vdm_jax.evaluation.bpd")
  assert _layer("vdm_jax.models.unet") == 2 and _layer("vdm_jax.elbo") == 1
  assert _layer("vdm_jax.runtime.checkpoints") == 4 and _layer("vdm_jax.config") == 4
  # A module in no listed sub-package, and a module outside the package, have no layer.
  assert _layer("vdm_jax._unlisted") is None and _layer("numpy.linalg") is None
  assert _layer("vdm_jax") == 1 and _layer("vdm_jax.data.catalogue") == 3
