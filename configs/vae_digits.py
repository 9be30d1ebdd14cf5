"""The seed's Gaussian VAE on the 8x8 digits: the baseline the VDM is compared with.

  python scripts/train.py --config=configs/vae_digits.py --workdir=runs/vae_digits
  python scripts/evaluate.py --config=configs/vae_digits.py --workdir=runs/vae_digits

Same data, trainer, checkpoints and evaluation command as configs/digits.py; the model is
q(z|x) = N(mu(x), diag sigma^2(x)) with a 16-dimensional z, p(z) = N(0, I) and a
categorical p(k|z) over the 17 grey levels, so its bits/dim bound the same discrete
likelihood as the VDM's. Expected test bits/dim and time: see README (VAE vs VDM).
"""

from vdm_jax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "digits.py")
  c.model.kind = "vae"
  c.model.vae_latent_dim = 16
  c.model.vae_hidden = 256
  c.model.vae_layers = 2
  c.loss.vae_num_samples = 1
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 0.0
  c.train.num_steps = 4000
  c.train.eval_every = 2000
  c.train.ckpt_every = 1000
  return c
