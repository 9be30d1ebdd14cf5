"""The one list of user errors: exceptions whose message says what is wrong and what to do.

The command-line tools print such an error alone, as one paragraph, and exit with status 1
(`_cli.user_errors_exit`); anything else is a bug and keeps its traceback. Library code
raises the built-in kinds (ValueError for a bad value, FileNotFoundError for a missing
file, ...) or an exception class that inherits `UserError`. Standard library only.
"""

from __future__ import annotations

from vdm_jax import _deps

__all__ = ["USER_ERRORS", "UserError"]


class UserError(Exception):
  """Base of the project's own user errors (a refused run, a damaged checkpoint, a failed
  save, a diverged run): their messages name the problem and the way out."""


USER_ERRORS = (
  ValueError,
  FileNotFoundError,
  NotADirectoryError,
  PermissionError,
  _deps.MissingExtraError,
  UserError,
)
"""The exception kinds that the tools report as one paragraph and exit 1."""
