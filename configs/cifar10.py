"""VDM on CIFAR-10 with the VDM paper's settings (Kingma et al. 2021, Table/Appendix).

  pip install -e '.[prepare]'
  tfds build cifar10 --file_format=array_record --data_dir=~/tensorflow_datasets
  python scripts/train.py --config=configs/cifar10.py --workdir=runs/cifar10

U-Net of 32 residual blocks down (33 up), 128 channels, no downsampling, Fourier
features, dropout 0.1; batch 128, AdamW lr 2e-4, EMA 0.9999, learned linear
gamma in [-13.3, 5], continuous time. The paper reports 2.65 bits/dim after 10M steps on
8 TPUv3 (2.49 with data augmentation); on one modern GPU roughly 3.0 after ~1M steps is an
expectation, not measured here. On CPU use `--config.model.n_layer=4 --config.model.n_embd=64`
for a smoke run.

Like every config file, this one sets only what differs from its base,
`vdm_jax.config.base_config()`: the Fourier features, dropout, schedule, continuous time,
learning rate and weight decay above are the base's defaults (tests/test_configs.py checks
the resolved config against the paper's settings).
"""

from vdm_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "cifar10"
  c.model.n_layer = 32
  c.model.n_embd = 128
  c.optim.warmup_steps = 1000
  c.optim.ema_decay = 0.9999
  c.train.batch_size = 128
  c.train.num_steps = 10_000_000
  c.train.log_every = 1000
  c.train.eval_every = 50_000
  c.train.ckpt_every = 10_000
  c.train.sample_steps = 1000
  c.eval.batch_size = 500
  return c
