"""The derivation's Gaussian VAE on the 8x8 digits: the baseline the VDM is compared with.

  vdm-train --config=vae_digits --workdir=runs/vae_digits
  vdm-evaluate --workdir=runs/vae_digits

Same data, trainer, checkpoints and evaluation command as configs/digits.py; the model is
q(z|x) = N(mu(x), diag sigma^2(x)) with an 8-dimensional z, p(z) = N(0, I) and a
categorical p(k|z) over the 17 grey levels, so its bits/dim bound the same discrete
likelihood as the VDM's. Expected test bits/dim and time: see docs/models.md (VAE vs VDM).
"""

from vdm_jax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "digits.py")
  c.model.kind = "vae"
  c.model.vae_latent_dim = 8
  c.model.vae_hidden = 128
  # Kept from digits.py: the VDM's budget (2,000 steps of 64) and AdamW's weight decay (on
  # 1,497 training digits the unregularised 256-wide VAE overfits within 2,000 steps,
  # docs/models.md).
  c.train.eval_every = 500
  return c
