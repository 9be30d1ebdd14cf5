"""The packaged configs: each sets only what differs from its base (base_config, or the
config it starts from), and cifar10 resolves to the VDM paper's settings."""

import ast
import pathlib

import pytest

from vdm_jax.config import base_config, sibling_config

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def _assignments(path):
  """(dotted field, literal value) of every `c.a.b = <literal>` in get_config()."""
  out = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
      target, names = node.targets[0], []
      while isinstance(target, ast.Attribute):
        names.insert(0, target.attr)
        target = target.value
      try:
        out.append((".".join(names), ast.literal_eval(node.value)))
      except ValueError:  # not a literal (e.g. a computed value): nothing to compare
        pass
  return out


def _get(config, field):
  for name in field.split("."):
    config = config[name]
  return config


@pytest.mark.parametrize(
  "path", [p for p in sorted(CONFIGS.glob("*.py")) if p.stem != "__init__"], ids=lambda p: p.stem
)
def test_config_files_set_only_what_differs_from_their_base(path):
  text = path.read_text()
  base = base_config()
  if "sibling_config(__file__," in text:  # a delta on another config file
    sibling = text.split("sibling_config(__file__,")[1].split(")")[0].strip().strip("\"'")
    base = sibling_config(str(path), sibling)
  assignments = _assignments(path)
  assert assignments, f"{path.name} assigns nothing this test can read"
  restated = [f"{f} = {v!r}" for f, v in assignments if _get(base, f) == v]
  assert not restated, f"{path.name} restates its base's values: {restated}"


def test_cifar10_is_the_vdm_papers_settings():
  c = sibling_config(str(CONFIGS / "cifar10.py"), "cifar10.py")
  paper = {
    "data.name": "cifar10",
    "model.n_layer": 32,
    "model.n_embd": 128,
    "model.dropout": 0.1,
    "model.fourier_features": True,
    "schedule.kind": "learned_linear",
    "schedule.gamma_min": -13.3,
    "schedule.gamma_max": 5.0,
    "loss.num_steps": 0,
    "optim.learning_rate": 2e-4,
    "optim.weight_decay": 0.01,
    "optim.ema_decay": 0.9999,
    "train.batch_size": 128,
  }
  assert {f: _get(c, f) for f in paper} == paper
