"""The adaptive per-dimension schedule (docs/adaptive.md) on the 32x32 RGB photo patches:
configs/photos.py with model.kind = "adaptive".

  vdm-train --config=photos_adaptive --workdir=runs/photos_adaptive
  vdm-evaluate --workdir=runs/photos_adaptive --passes=4

The schedule network outputs 3 coefficients for each of the 3,072 dimensions; the rest
(U-Net, optimiser, 500 steps of 32) is configs/photos.py. Not measured at this size.
"""

from vdm_jax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "photos.py")
  c.model.kind = "adaptive"
  c.model.adaptive_latent_dim = 16
  return c
