"""Renamed modules still import under their old names, with a DeprecationWarning."""

import importlib
import sys

import pytest


def _import_fresh(name: str):
  sys.modules.pop(name, None)
  parent, _, child = name.rpartition(".")
  if hasattr(sys.modules.get(parent), child):
    delattr(sys.modules[parent], child)  # so that the import runs the module again
  return importlib.import_module(name)


def test_evaluation_sampling_is_checkpoint_samples():
  from vdm_jax.evaluation import checkpoint_samples

  with pytest.warns(DeprecationWarning, match="evaluation.checkpoint_samples"):
    old = _import_fresh("vdm_jax.evaluation.sampling")
  for name in ("draw_samples", "jit_sampler", "write_sample_grid"):
    assert getattr(old, name) is getattr(checkpoint_samples, name)
  assert old.sample_checkpoint is not checkpoint_samples.sample_checkpoint  # the old interface


def test_old_sample_checkpoint_prints_and_returns_the_paths(monkeypatch, capsys):
  from vdm_jax.evaluation import checkpoint_samples

  with pytest.warns(DeprecationWarning):
    old = _import_fresh("vdm_jax.evaluation.sampling")
  result = {
    "paths": ["s.npz", "s.png"],
    "seconds": 1.25,
    "num_samples": 4,
    "method": "ddim",
    "num_steps": 8,
    "checkpoint_step": 3,
  }
  calls = []
  monkeypatch.setattr(
    checkpoint_samples, "sample_checkpoint", lambda run, **kw: calls.append((run, kw)) or result
  )
  assert old.sample_checkpoint("run", num_samples=4, method="ddim") == ["s.npz", "s.png"]
  assert calls == [("run", {"num_samples": 4, "method": "ddim"})]
  assert capsys.readouterr().out == checkpoint_samples.render_samples(result) + "\n"
  assert "4 samples (ddim, T=8, step 3) in 1.2 s" in checkpoint_samples.render_samples(result)


def test_models_noise_is_schedule_modules():
  from vdm_jax.models import schedule_modules

  with pytest.warns(DeprecationWarning, match="models.schedule_modules"):
    old = _import_fresh("vdm_jax.models.noise")
  for name in ("FixedSchedule", "LearnedLinearSchedule", "MonotoneSchedule"):
    assert getattr(old, name) is getattr(schedule_modules, name)


def test_bpd_public_is_a_warning_alias_of_without_arrays():
  from vdm_jax.evaluation import bpd

  result = {"bpd": 1.0, "_per_example": [1, 2]}
  with pytest.warns(DeprecationWarning, match="without_arrays"):
    assert bpd.public(result) == bpd.without_arrays(result) == {"bpd": 1.0}
