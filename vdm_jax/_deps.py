"""Optional dependencies: which extra of `pyproject.toml` installs what.

`pip install vdm_jax` brings only jax and numpy (the pure maths); the training stack,
the ODE solver, the plots and TensorBoard writing are extras. A feature whose extra is
missing fails with the install command, not with a bare ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingExtraError(ImportError):
  """An optional dependency is missing; the message names the extra that installs it."""


def available(module: str) -> bool:
  """Whether `module` can be imported (without importing it)."""
  return importlib.util.find_spec(module) is not None


def require(module: str, *, extra: str, feature: str) -> ModuleType:
  """Imports `module`, or raises `MissingExtraError` naming the extra that installs it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtraError(
      f"{feature} needs {module!r}, which is not installed. Install the {extra!r} extra: "
      f"pip install 'vdm_jax[{extra}]' (in a clone: pip install -e '.[{extra}]')."
    ) from e
