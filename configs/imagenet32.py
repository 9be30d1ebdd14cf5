"""VDM on downsampled ImageNet 32x32 (tfds `downsampled_imagenet/32x32`).

  pip install -e '.[prepare]'
  tfds build downsampled_imagenet/32x32 --file_format=array_record --data_dir=~/tensorflow_datasets
  python scripts/train.py --config=configs/imagenet32.py --workdir=runs/imagenet32

The CIFAR-10 settings (a delta on configs/cifar10.py) with batch 512 and no dropout, as
in the VDM paper, which reports 3.72 bits/dim; a long multi-accelerator run.
"""

from vdm_jax.config import sibling_config


def get_config():
  c = sibling_config(__file__, "cifar10.py")
  c.data.name = "imagenet32"
  c.model.dropout = 0.0
  c.train.batch_size = 512
  c.train.num_steps = 2_000_000
  return c
