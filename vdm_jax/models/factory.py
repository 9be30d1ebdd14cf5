"""Builds models from a config: the built-in entries of the registries, and `make_model`.

Each choice is registered once here (`registry.SCHEDULES`, `DENOISERS`, `MODELS`); code
outside the package adds its own with `models.DENOISERS.register("name", builder)`, and
`config.model.denoiser="name"` then selects it (validation reads the registry).
"""

from __future__ import annotations

import flax.linen as nn

from vdm_jax import schedules
from vdm_jax.models import adaptive
from vdm_jax.models.mlp import MLPDenoiser
from vdm_jax.models.registry import DENOISERS, MODELS, SCHEDULES
from vdm_jax.models.schedule_modules import FixedSchedule, LearnedLinearSchedule, MonotoneSchedule
from vdm_jax.models.unet import UNet
from vdm_jax.models.vae import GaussianVAE, VAEDecoder, VAEEncoder
from vdm_jax.models.vdm import VDM
from vdm_jax.models.vdm_reference import ReferenceNNetSchedule, ReferenceScoreUNet

__all__ = ["make_denoiser", "make_model", "make_schedule"]


def make_schedule(config, info=None) -> nn.Module:
  """The schedule module named by `config.schedule.kind`."""
  return SCHEDULES.lookup(config.schedule.kind)(config, info)


def make_denoiser(config, info) -> nn.Module:
  """The denoiser module named by `config.model.denoiser`, for data described by `info`."""
  return DENOISERS.lookup(config.model.denoiser)(config, info)


def make_model(config, info):
  """The model named by `config.model.kind` for data described by `info` (a
  `data.DatasetInfo`): a `VDM` ("vdm"), the seed's Gaussian VAE ("vae"), or a VDM with a
  learned per-dimension schedule adapted to each input ("adaptive", `adaptive.AdaptiveVDM`)."""
  return MODELS.lookup(config.model.kind)(config, info)


def _range(config):
  return config.schedule.gamma_min, config.schedule.gamma_max


SCHEDULES.register("linear", lambda c, info: FixedSchedule(schedules.LinearSchedule(*_range(c))))
SCHEDULES.register("cosine", lambda c, info: FixedSchedule(schedules.CosineSchedule(*_range(c))))
SCHEDULES.register("ddpm", lambda c, info: FixedSchedule(schedules.DDPMLinearSchedule()))
SCHEDULES.register("learned_linear", lambda c, info: LearnedLinearSchedule(*_range(c)))
SCHEDULES.register("monotone", lambda c, info: MonotoneSchedule(*_range(c)))
# google-research/vdm's "learnable_nnet" (its "fixed" is "linear", "learnable_scalar" is
# "learned_linear"): models.vdm_reference, scripts/import_vdm_checkpoint.py.
SCHEDULES.register("vdm_reference_nnet", lambda c, info: ReferenceNNetSchedule(*_range(c)))


def _unet(config, info) -> UNet:
  if len(info.shape) != 3:
    raise ValueError(
      f"config.model.denoiser='unet' needs image data [H, W, C]; {info.name} has shape "
      f"{info.shape}. Use config.model.denoiser='mlp'."
    )
  m = config.model
  return UNet(
    n_layer=m.n_layer,
    n_embd=m.n_embd,
    norm_groups=m.norm_groups,
    dropout=m.dropout,
    fourier_features=m.fourier_features,
    attention_everywhere=m.attention_everywhere,
    gamma_min=config.schedule.gamma_min,
    gamma_max=config.schedule.gamma_max,
    vocab_size=info.vocab_size,
    dtype=m.dtype,
    scan_layers=m.scan_layers,
    remat=m.remat,
    **_conditioning(config, info),
  )


def _mlp(config, info) -> MLPDenoiser:
  if len(info.shape) != 1:
    raise ValueError(
      f"config.model.denoiser='mlp' needs flat data [D]; {info.name} has shape {info.shape}."
    )
  m = config.model
  return MLPDenoiser(
    hidden=m.mlp_hidden,
    num_layers=m.mlp_layers,
    fourier_features=m.fourier_features,
    gamma_min=config.schedule.gamma_min,
    gamma_max=config.schedule.gamma_max,
    vocab_size=info.vocab_size,
    dtype=m.dtype,
    **_conditioning(config, info),
  )


def _conditioning(config, info) -> dict:
  """The denoiser's label fields: C classes of a labelled dataset when model.conditional."""
  return {"num_classes": _num_classes(config, info), "label_dropout": config.model.label_dropout}


def _num_classes(config, info) -> int:
  if not config.model.conditional:
    return 0
  if not info.num_classes:
    raise ValueError(
      f"config.model.conditional=True needs labelled data; dataset {info.name!r} has no "
      "labels (digits has 10). Set config.model.conditional=False."
    )
  return info.num_classes


def _vdm_reference(config, info) -> ReferenceScoreUNet:
  if len(info.shape) != 3:
    raise ValueError(
      f"config.model.denoiser='vdm_reference' needs image data [H, W, C]; {info.name} has "
      f"shape {info.shape}."
    )
  if config.model.conditional:  # its network has no label input: labels would be ignored
    raise ValueError(
      "config.model.conditional=True needs a denoiser with a label embedding ('unet' or "
      "'mlp'); config.model.denoiser='vdm_reference' has none."
    )
  m = config.model
  return ReferenceScoreUNet(
    n_layer=m.n_layer,
    n_embd=m.n_embd,
    norm_groups=m.norm_groups,
    dropout=m.dropout,
    fourier_features=m.fourier_features,
    attention_everywhere=m.attention_everywhere,
    gamma_min=config.schedule.gamma_min,
    gamma_max=config.schedule.gamma_max,
  )


DENOISERS.register("unet", _unet)
DENOISERS.register("mlp", _mlp)
DENOISERS.register("vdm_reference", _vdm_reference)  # google-research/vdm's ScoreUNet


def _vdm(config, info) -> VDM:
  return VDM(
    schedule=make_schedule(config, info),
    denoiser=make_denoiser(config, info),
    vocab_size=info.vocab_size,
    data_shape=tuple(info.shape),
    prediction=config.model.prediction,
    num_steps=config.loss.num_steps,
    antithetic=config.loss.antithetic,
    schedule_objective=config.schedule.objective,
    num_classes=_num_classes(config, info),
  )


def _vae(config, info) -> GaussianVAE:
  m = config.model
  return GaussianVAE(
    encoder=VAEEncoder(latent_dim=m.vae_latent_dim, hidden=m.vae_hidden, num_layers=m.vae_layers),
    decoder=VAEDecoder(
      data_shape=tuple(info.shape),
      vocab_size=info.vocab_size,
      hidden=m.vae_hidden,
      num_layers=m.vae_layers,
    ),
    vocab_size=info.vocab_size,
    data_shape=tuple(info.shape),
    num_samples=config.loss.vae_num_samples,
  )


MODELS.register("vdm", _vdm)
MODELS.register("vae", _vae)
MODELS.register("adaptive", lambda c, info: adaptive.build(c, info, make_denoiser(c, info)))
