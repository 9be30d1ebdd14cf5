"""Flax linen modules: denoisers and learned noise schedules (DESIGN §3, layer 2)."""

from vdm_jax.models.mlp import MLPDenoiser
from vdm_jax.models.noise import FixedSchedule, LearnedLinearSchedule, MonotoneSchedule
from vdm_jax.models.unet import UNet

__all__ = ["FixedSchedule", "LearnedLinearSchedule", "MLPDenoiser", "MonotoneSchedule", "UNet"]
