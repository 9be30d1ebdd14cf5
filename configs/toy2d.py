"""VDM with an MLP denoiser on a 2-D Gaussian mixture quantised to 256 levels per axis.

  python scripts/train.py --config=configs/toy2d.py --workdir=runs/toy2d

Offline and fast (a couple of minutes on 2 CPU cores). The exact bits/dim of the
quantised mixture is known (`vdm_jax.data.toy2d.log_prob_quantised`), so the test
bits/dim can be compared with the truth.
"""

from vdm_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "toy2d"
  c.model.denoiser = "mlp"
  c.optim.learning_rate = 1e-3
  c.train.batch_size = 256
  c.train.num_steps = 3000
  c.train.eval_every = 1500
  c.train.num_samples = 0
  c.eval.batch_size = 1000
  return c
