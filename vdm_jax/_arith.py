"""Integer arithmetic the package repeats: ceiling division and rounding up to a multiple.

Plain Python on non-negative ints (batch and example counts), importable by every layer.
"""

from __future__ import annotations

__all__ = ["ceil_div", "round_up"]


def ceil_div(a: int, b: int) -> int:
  """ceil(a / b) for ints a >= 0, b >= 1, exactly (no float rounding for large a).

  >>> ceil_div(10, 4), ceil_div(12, 4), ceil_div(0, 4)
  (3, 3, 0)
  """
  return -(-a // b)


def round_up(a: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= a (a >= 0, multiple >= 1).

  >>> round_up(10, 4), round_up(12, 4)
  (12, 12)
  """
  return ceil_div(a, multiple) * multiple
