"""A named registry: the single list of the choices a config field may take.

Schedules, denoisers and models (`vdm_jax.models`) and datasets (`vdm_jax.data`) are each
registered once; config validation and error messages read the registries, so adding a
choice is one `register` call. An entry may carry its own config check (`register(...,
check=...)`), which `config.validate` runs when a config selects the entry: the rules that
belong to one choice live beside it, not in the validation of every config. Plain Python,
importable by every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")

Check = Callable[..., None]
"""A config check: called with what the registry's field documents (for the model
registries `(config, info)`), it raises ValueError naming the field, the value and the way
out, and returns None for a config the entry can run."""


class Registry(Mapping[str, T], Generic[T]):
  """name -> entry, read like a dict; `register` adds, `lookup` fails with the choices.

  Example:
    >>> denoisers = Registry("config.model.denoiser")
    >>> _ = denoisers.register("mlp", lambda config, info: None)
    >>> "mlp" in denoisers, list(denoisers)
    (True, ['mlp'])
    >>> denoisers.lookup("unet")
    Traceback (most recent call last):
    ...
    ValueError: Unknown config.model.denoiser 'unet'; the choices are ['mlp'].
    >>> def needs_width(config, info):
    ...   if config["width"] < 1:
    ...     raise ValueError(f"config.width must be >= 1, got {config['width']}.")
    >>> _ = denoisers.register("wide", lambda config, info: None, check=needs_width)
    >>> denoisers.check("wide", {"width": 0}, None)
    Traceback (most recent call last):
    ...
    ValueError: config.width must be >= 1, got 0.
  """

  def __init__(self, field: str, *, hint: str = ""):
    self.field = field
    self.hint = hint
    self._entries: dict[str, T] = {}
    self._checks: dict[str, Check] = {}

  def register(
    self, name: str, entry: T, *, replace: bool = False, check: Check | None = None
  ) -> T:
    """Adds `entry` under `name` (`replace=True` to overwrite one); returns `entry`.

    `check`, if given, is the entry's own config check, run by `check` (below) when a
    config selects `name`; replacing an entry replaces its check (None: no check).
    """
    if not isinstance(name, str) or not name:
      raise ValueError(f"A {self.field} name must be a non-empty string, got {name!r}.")
    if name in self._entries and not replace:
      raise ValueError(
        f"{self.field} {name!r} is already registered; pass replace=True to replace it."
      )
    if check is not None and not callable(check):
      raise ValueError(f"The check of {self.field} {name!r} must be callable, got {check!r}.")
    self._entries[name] = entry
    self._checks.pop(name, None)
    if check is not None:
      self._checks[name] = check
    return entry

  def unregister(self, name: str) -> None:
    """Removes `name` and its check; ValueError with the choices if it is not registered.

    `del registry[name]` is the same call.
    """
    self.lookup(name)
    del self._entries[name]
    self._checks.pop(name, None)

  __delitem__ = unregister

  def lookup(self, name: str) -> T:
    """The entry registered under `name`; ValueError naming the choices if there is none."""
    if name not in self._entries:
      raise ValueError(
        f"Unknown {self.field} {name!r}; the choices are {list(self._entries)}.{self.hint}"
      )
    return self._entries[name]

  def check(self, name: str, *args) -> None:
    """Runs the config check registered with `name` on `args` (nothing if it has none).

    Raises:
      ValueError: from the check, or naming the choices if `name` is not registered.
    """
    self.lookup(name)
    if name in self._checks:
      self._checks[name](*args)

  def __getitem__(self, name: str) -> T:
    return self._entries[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.field!r}, {list(self._entries)})"
