"""Helpers shared by the entry points in `scripts/` (which alone define flags)."""

import sys

from absl import logging

from vdm_jax.runtime.distributed import initialize as initialize_distributed

__all__ = ["initialize_distributed", "quiet_logging"]


def quiet_logging() -> None:
  """Show absl/orbax/jax INFO logs only when asked for (`--verbosity=0` or `-v 0`).

  The scripts print what a user needs; the libraries' INFO lines (checkpoint I/O,
  backend probing) would bury it. Call first thing in `main`.
  """
  if not any(a.startswith(("--verbosity", "-v")) for a in sys.argv[1:]):
    logging.set_verbosity(logging.WARNING)
