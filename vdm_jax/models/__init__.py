"""Models (README "Layout": layer 2): Flax networks, learned schedules, the model objects.

* `interface`: the `Model` / `DiffusionModel` protocols every model implements.
* `vdm.VDM`: a schedule and a denoiser tied to the ELBO terms; `vae.GaussianVAE`: the
  seed's Gaussian VAE baseline; `adaptive.AdaptiveVDM`: a learned per-dimension schedule
  conditioned on an auxiliary latent (docs/adaptive.md).
* `unet.UNet`, `mlp.MLPDenoiser`: denoisers; `schedule_modules`: fixed and learned schedules
  as Flax modules (`noise` before: that name imports with a warning);
  `embed`: the gamma embedding and Fourier features.
* `registry`: `SCHEDULES`, `DENOISERS`, `MODELS` (config name -> builder);
  `factory.make_model(config, info)` builds the configured model, and
  `factory.check_config(config, info)` runs the chosen entries' own config checks.
"""

from vdm_jax.models.adaptive import AdaptiveVDM
from vdm_jax.models.factory import check_config, make_denoiser, make_model, make_schedule
from vdm_jax.models.interface import DiffusionModel, Model
from vdm_jax.models.mlp import MLPDenoiser
from vdm_jax.models.registry import DENOISERS, MODELS, SCHEDULES
from vdm_jax.models.schedule_modules import FixedSchedule, LearnedLinearSchedule, MonotoneSchedule
from vdm_jax.models.unet import UNet
from vdm_jax.models.vae import GaussianVAE
from vdm_jax.models.vdm import VDM

__all__ = [
  "DENOISERS",
  "MODELS",
  "SCHEDULES",
  "VDM",
  "AdaptiveVDM",
  "DiffusionModel",
  "FixedSchedule",
  "GaussianVAE",
  "LearnedLinearSchedule",
  "MLPDenoiser",
  "Model",
  "MonotoneSchedule",
  "UNet",
  "check_config",
  "make_denoiser",
  "make_model",
  "make_schedule",
]
