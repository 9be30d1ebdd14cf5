"""vdm_jax._registry.Registry: adding, replacing and removing entries and their config
checks, and the messages that name the choices."""

import pytest

from vdm_jax._registry import Registry


def _refuse_odd(config, info):
  if config["width"] % 2:
    raise ValueError(f"config.width={config['width']} must be even.")


def test_register_lookup_and_the_choices_in_errors():
  r = Registry("config.model.thing", hint=" See docs/extending.md.")
  entry = object()
  assert r.register("a", entry) is entry and r.lookup("a") is entry and r["a"] is entry
  assert list(r) == ["a"] and len(r) == 1 and "a" in r and "b" not in r
  with pytest.raises(
    ValueError, match=r"^Unknown config.model.thing 'b'; the choices are \['a'\]\. See docs"
  ):
    r.lookup("b")
  with pytest.raises(ValueError, match="'a' is already registered; pass replace=True"):
    r.register("a", object())
  for bad in ["", None, 3]:
    with pytest.raises(ValueError, match="name must be a non-empty string"):
      r.register(bad, object())


def test_checks_run_for_their_entry_only():
  r = Registry("config.model.thing")
  r.register("even", "builder", check=_refuse_odd)
  r.register("any", "builder")
  r.check("even", {"width": 4}, None)
  with pytest.raises(ValueError, match="config.width=3 must be even"):
    r.check("even", {"width": 3}, None)
  r.check("any", {"width": 3}, None)  # no check registered: nothing to refuse
  with pytest.raises(
    ValueError, match=r"Unknown config.model.thing 'none'; the choices are \['even', 'any'\]"
  ):
    r.check("none", {"width": 4}, None)
  with pytest.raises(ValueError, match="check of config.model.thing 'x' must be callable"):
    r.register("x", "builder", check="not a function")
  assert "x" not in r  # refused before anything was added


def test_replacing_an_entry_replaces_its_check():
  r = Registry("config.model.thing")
  r.register("even", "builder", check=_refuse_odd)
  r.register("even", "other builder", replace=True)
  assert r["even"] == "other builder"
  r.check("even", {"width": 3}, None)  # the old check went with the old entry


def test_unregister_and_del_are_one_removal():
  r = Registry("config.model.thing")
  r.register("even", "builder", check=_refuse_odd)
  r.unregister("even")
  assert "even" not in r
  r.register("even", "builder")  # registered again, without the removed entry's check
  r.check("even", {"width": 3}, None)
  del r["even"]
  assert list(r) == []
  with pytest.raises(ValueError, match=r"Unknown config.model.thing 'even'; the choices are \[\]"):
    r.unregister("even")
  with pytest.raises(ValueError, match="Unknown config.model.thing 'even'"):
    del r["even"]
