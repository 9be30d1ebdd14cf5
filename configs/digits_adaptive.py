"""The adaptive per-dimension schedule (docs/adaptive.md) on the 8x8 digits: configs/digits.py
with model.kind = "adaptive".

  vdm-train --config=digits_adaptive --workdir=runs/digits_adaptive
  vdm-evaluate --workdir=runs/digits_adaptive

Same data, U-Net, optimiser and step budget as configs/digits.py, so the two runs compare
(docs/adaptive.md, "Measured"); the bits/dim include the auxiliary latent's KL term. The
latent (8 dimensions) and the schedule network (128 wide) are the defaults of
`base_config()`.
"""

from vdm_jax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "digits.py")
  c.model.kind = "adaptive"
  return c
