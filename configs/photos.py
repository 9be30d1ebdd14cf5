"""VDM on the offline photo patches: 32x32 RGB, V = 256 (CIFAR-shaped), CPU-sized.

  vdm-train --config=photos --workdir=runs/photos
  vdm-evaluate --workdir=runs/photos --passes=4

No download: the six photos ship inside scikit-learn and scikit-image and are cut into
5,270 train and 524 test patches (`vdm_jax.data.photos`) in about 2 s. The model sees 3
channels and V = 256 from the dataset: the decoder has 256 bins per dimension and the
Fourier features of z use 2^n 2 pi z for n in [6, 8), as set from V. Measured on a 2-core
CPU shared with other jobs: 500 steps in 27 min (0.2-0.45 steps/s), test bits/dim
3.86 +- 0.10 (`--passes=4`), against PNG
4.14, lossless WebP 3.55 per patch and a uniform 8.00 (docs/data.md, `scripts/codec_table.py`).

The same config trains on your own images after `vdm-import-images --name=NAME ...`:
`--config.data.name=NAME`.

On a GPU, the VDM paper's CIFAR-10 model: `--config.model.n_layer=32 --config.model.n_embd=128
--config.model.norm_groups=32 --config.train.batch_size=128 --config.optim.learning_rate=2e-4
--config.optim.ema_decay=0.9999 --config.train.num_steps=1000000` (or start from
`configs/cifar10.py` with `--config.data.name=photos`). Not measured here: with 5,270
training patches expect such a model to overfit, so watch the test bits/dim
(`train.eval_every`).
"""

from vdm_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "photos"
  c.model.n_layer = 2
  c.model.n_embd = 32
  c.model.norm_groups = 8
  c.optim.learning_rate = 1e-3
  c.optim.ema_decay = 0.98  # a 50-step average: 0.995 lagged far behind in 500 steps
  c.train.batch_size = 32
  c.train.num_steps = 500
  c.train.eval_every = 500
  c.train.ckpt_every = 250
  c.train.num_samples = 16
  c.train.sample_steps = 250
  return c
