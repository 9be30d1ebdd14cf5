"""A named registry: the single list of the choices a config field may take.

Schedules, denoisers and models (`vdm_jax.models`) and datasets (`vdm_jax.data`) are each
registered once; config validation and error messages read the registries, so adding a
choice is one `register` call. Plain Python, importable by every layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


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
  """

  def __init__(self, field: str, *, hint: str = ""):
    self.field = field
    self.hint = hint
    self._entries: dict[str, T] = {}

  def register(self, name: str, entry: T, *, replace: bool = False) -> T:
    """Adds `entry` under `name` (`replace=True` to overwrite one); returns `entry`."""
    if not isinstance(name, str) or not name:
      raise ValueError(f"A {self.field} name must be a non-empty string, got {name!r}.")
    if name in self._entries and not replace:
      raise ValueError(
        f"{self.field} {name!r} is already registered; pass replace=True to replace it."
      )
    self._entries[name] = entry
    return entry

  def unregister(self, name: str) -> None:
    del self._entries[name]

  def lookup(self, name: str) -> T:
    if name not in self._entries:
      raise ValueError(
        f"Unknown {self.field} {name!r}; the choices are {list(self._entries)}.{self.hint}"
      )
    return self._entries[name]

  def __getitem__(self, name: str) -> T:
    return self._entries[name]

  def __delitem__(self, name: str) -> None:
    del self._entries[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    return f"Registry({self.field!r}, {list(self._entries)})"
