"""VDM on MNIST (28x28, 256 grey levels).

  pip install -e '.[prepare]'
  tfds build mnist --file_format=array_record --data_dir=~/tensorflow_datasets
  python scripts/train.py --config=configs/mnist.py --workdir=runs/mnist

A mid-sized U-Net (8 blocks, 64 channels); expect about 1.0 bits/dim after ~100k steps
on one GPU (well below 8 bits/dim of a uniform model); a few hours.
"""

from vdm_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "mnist"
  c.model.n_layer = 8
  c.optim.ema_decay = 0.9999
  c.train.batch_size = 128
  c.train.num_steps = 100_000
  c.train.log_every = 500
  c.train.eval_every = 10_000
  c.train.ckpt_every = 5000
  c.eval.batch_size = 500
  return c
