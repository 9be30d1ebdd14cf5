"""The registries of model choices: `config.schedule.kind`, `config.model.denoiser` and
`config.model.kind`, each a name -> builder taking `(config, info)` (`info` a
`data.DatasetInfo`), and optionally a config check taking the same arguments
(`register(name, builder, check=check)`). The built-in entries are registered in
`vdm_jax.models.factory`; `config.validate` reads the names from here and runs the chosen
model's check (`models.check_config`), which runs its denoiser's. docs/extending.md.
"""

from __future__ import annotations

from collections.abc import Callable

from vdm_jax._registry import Registry

__all__ = ["DENOISERS", "MODELS", "SCHEDULES"]

Builder = Callable  # (config, info) -> a Flax module (schedules, denoisers) or a model

SCHEDULES: Registry[Builder] = Registry("config.schedule.kind")
"""Builders of the noise schedules, by `config.schedule.kind`."""
DENOISERS: Registry[Builder] = Registry("config.model.denoiser")
"""Builders of the denoising networks, by `config.model.denoiser`."""
MODELS: Registry[Builder] = Registry("config.model.kind")
"""Builders of the models (`VDM`, `GaussianVAE`), by `config.model.kind`."""
