"""VDM on scikit-learn's 8x8 digits (17 grey levels): the offline default, CPU-sized.

  python scripts/train.py --config=configs/digits.py --workdir=runs/digits

No download: the dataset ships with scikit-learn and is built into a tfds array_record
dataset in about a second. Expected: see docs/running.md, "The demo" (test bits/dim and time on 2 CPU cores);
a uniform model scores log2(17) = 4.09 bits/dim.
"""

from vdm_jax.config import base_config


def get_config():
  c = base_config()
  c.model.n_layer = 2
  c.model.n_embd = 32
  c.model.norm_groups = 8
  c.optim.learning_rate = 1e-3
  c.optim.ema_decay = 0.995
  c.train.sample_steps = 250
  return c
