"""Builds models from a config: the built-in entries of the registries, and `make_model`.

Each choice is registered once here (`registry.SCHEDULES`, `DENOISERS`, `MODELS`), with
its builder and its own config check; code outside the package adds its own with
`models.DENOISERS.register("name", builder, check=check)`, and
`config.model.denoiser="name"` then selects it (validation reads the registry and runs
`check_config`).

A check takes `(config, info)` like a builder (`info` a `data.DatasetInfo`; its split
sizes may be empty, as `data.static_info` gives them) and refuses what its entry cannot
run, including the options it would silently ignore (e.g. `model.scan_layers` for any
denoiser but the U-Net). A model that uses `config.model.denoiser` runs that denoiser's
check from its own.
"""

from __future__ import annotations

import flax.linen as nn

from vdm_jax import schedules
from vdm_jax.models import adaptive, vdm_reference
from vdm_jax.models.mlp import MLPDenoiser
from vdm_jax.models.registry import DENOISERS, MODELS, SCHEDULES
from vdm_jax.models.schedule_modules import FixedSchedule, LearnedLinearSchedule, MonotoneSchedule
from vdm_jax.models.unet import UNet
from vdm_jax.models.vae import GaussianVAE, VAEDecoder, VAEEncoder
from vdm_jax.models.vdm import VDM
from vdm_jax.models.vdm_reference import ReferenceNNetSchedule, ReferenceScoreUNet

__all__ = ["check_config", "make_denoiser", "make_model", "make_schedule"]


def make_schedule(config, info=None) -> nn.Module:
  """The schedule module named by `config.schedule.kind`."""
  return SCHEDULES.lookup(config.schedule.kind)(config, info)


def make_denoiser(config, info) -> nn.Module:
  """The denoiser module named by `config.model.denoiser`, for data described by `info`."""
  return DENOISERS.lookup(config.model.denoiser)(config, info)


def make_model(config, info):
  """The model named by `config.model.kind` for data described by `info` (a
  `data.DatasetInfo`): a `VDM` ("vdm"), the derivation's Gaussian VAE ("vae"), or a VDM with a
  learned per-dimension schedule adapted to each input ("adaptive", `adaptive.AdaptiveVDM`)."""
  return MODELS.lookup(config.model.kind)(config, info)


def check_config(config, info) -> None:
  """Runs the config check of the model `config.model.kind` (and through it that of its
  denoiser) for data described by `info`; `config.validate` calls it.

  Raises:
    ValueError: naming the field the chosen model or denoiser cannot run, or the unknown
      `config.model.kind` and the choices.
  """
  MODELS.check(config.model.kind, config, info)


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


def _needs_shape(config, info, ndim: int, hint: str = "") -> None:
  """The denoiser `config.model.denoiser` takes examples of `ndim` axes (3: [H, W, C])."""
  if len(info.shape) != ndim:
    data = "image data [H, W, C]" if ndim == 3 else "flat data [D]"
    raise ValueError(
      f"config.model.denoiser={config.model.denoiser!r} needs {data}; {info.name} has shape "
      f"{tuple(info.shape)}.{hint}"
    )


def _check_groups(config) -> None:
  """GroupNorm splits the n_embd channels into norm_groups groups."""
  if config.model.n_embd % config.model.norm_groups:
    raise ValueError(
      f"config.model.n_embd ({config.model.n_embd}) must be divisible by "
      f"config.model.norm_groups ({config.model.norm_groups})."
    )


def _refuse_unet_options(config) -> None:
  """scan_layers and remat are the U-Net's: any other choice would ignore them."""
  for name in ["scan_layers", "remat"]:
    if config.model[name]:
      raise ValueError(
        f"config.model.{name}=True applies to the U-Net denoiser only; this config has "
        f"model.kind={config.model.kind!r}, model.denoiser={config.model.denoiser!r}."
      )


def _check_unet(config, info) -> None:
  _needs_shape(config, info, 3, " Use config.model.denoiser='mlp'.")
  _check_groups(config)


def _check_mlp(config, info) -> None:
  _refuse_unet_options(config)
  _needs_shape(config, info, 1)


def _check_vdm_reference(config, info) -> None:
  vdm_reference.check_config(config, info.shape)  # its image shape, prediction, dtype, n_embd
  _check_groups(config)
  _refuse_unet_options(config)
  if config.model.conditional:  # its network has no label input: labels would be ignored
    raise ValueError(
      "config.model.conditional=True needs a denoiser with a label embedding ('unet' or "
      "'mlp'); config.model.denoiser='vdm_reference' has none."
    )


def _unet_fields(config) -> dict:
  """The attributes the U-Net and google-research/vdm's ScoreUNet share, from the config."""
  m = config.model
  return {
    "n_layer": m.n_layer,
    "n_embd": m.n_embd,
    "norm_groups": m.norm_groups,
    "dropout": m.dropout,
    "fourier_features": m.fourier_features,
    "attention_everywhere": m.attention_everywhere,
    "gamma_min": config.schedule.gamma_min,
    "gamma_max": config.schedule.gamma_max,
  }


def _unet(config, info) -> UNet:
  _check_unet(config, info)
  m = config.model
  return UNet(
    **_unet_fields(config),
    vocab_size=info.vocab_size,
    dtype=m.dtype,
    scan_layers=m.scan_layers,
    remat=m.remat,
    **_conditioning(config, info),
  )


def _mlp(config, info) -> MLPDenoiser:
  _check_mlp(config, info)
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
  _check_vdm_reference(config, info)
  return ReferenceScoreUNet(**_unet_fields(config))


DENOISERS.register("unet", _unet, check=_check_unet)
DENOISERS.register("mlp", _mlp, check=_check_mlp)
# google-research/vdm's ScoreUNet
DENOISERS.register("vdm_reference", _vdm_reference, check=_check_vdm_reference)


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


def _check_not_vdm(config) -> None:
  """The options only the VDM (`model.kind="vdm"`) uses."""
  _refuse_unet_options(config)
  if config.model.dtype != "float32":
    raise ValueError(
      f"config.model.dtype={config.model.dtype!r} applies to the VDM's denoiser; "
      f"model.kind={config.model.kind!r} computes in float32. Leave model.dtype='float32'."
    )
  if config.model.conditional:
    raise ValueError(
      f"config.model.conditional=True applies to model.kind='vdm', got {config.model.kind!r}."
    )


def _check_vdm(config, info) -> None:
  DENOISERS.check(config.model.denoiser, config, info)
  _num_classes(config, info)  # conditional needs labelled data


def _check_vae(config, info) -> None:
  _check_not_vdm(config)
  if config.loss.time_sampling != "uniform":
    raise ValueError("config.loss.time_sampling applies to diffusion models, not model.kind='vae'.")
  if config.loss.num_steps:
    raise ValueError(
      f"config.loss.num_steps={config.loss.num_steps} but config.model.kind='vae' has no "
      "diffusion steps; leave it at 0."
    )


def _check_adaptive(config, info) -> None:
  _check_not_vdm(config)
  if config.schedule.objective != "elbo":
    raise ValueError(
      f"config.schedule.objective={config.schedule.objective!r} shapes a learned scalar "
      "schedule; model.kind='adaptive' learns its per-dimension schedule on the ELBO. Use "
      "config.schedule.objective='elbo'."
    )
  DENOISERS.check(config.model.denoiser, config, info)


MODELS.register("vdm", _vdm, check=_check_vdm)
MODELS.register("vae", _vae, check=_check_vae)
MODELS.register(
  "adaptive",
  lambda c, info: adaptive.build(c, info, make_denoiser(c, info)),
  check=_check_adaptive,
)
