"""Shared test helpers (importable from tests: pytest puts this folder on sys.path)."""

from vdm_jax.config import base_config


def tiny_config(data_dir, **train_overrides):
  """A digits config small enough to train a few steps in seconds on CPU."""
  c = base_config()
  c.data.data_dir = str(data_dir)
  c.model.n_layer, c.model.n_embd, c.model.norm_groups = 1, 16, 8
  c.model.dropout = 0.1
  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 5
  c.train.batch_size = 32
  c.train.num_steps = 6
  c.train.log_every = 3
  c.train.ckpt_every = 3
  c.train.eval_every = 1000
  c.train.num_samples = 0
  c.eval.batch_size = 256
  for k, v in train_overrides.items():
    c.train[k] = v
  return c
