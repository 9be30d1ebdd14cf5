"""Deprecated: renamed `vdm_jax.models.schedule_modules` (it holds schedules, not noise).

Importing it warns; the classes are those of `schedule_modules`.
"""

import warnings

from vdm_jax.models.schedule_modules import FixedSchedule, LearnedLinearSchedule, MonotoneSchedule

__all__ = ["FixedSchedule", "LearnedLinearSchedule", "MonotoneSchedule"]

warnings.warn(
  "vdm_jax.models.noise is renamed vdm_jax.models.schedule_modules.",
  DeprecationWarning,
  stacklevel=2,
)
