"""Train-step and eval-step throughput of a config, and the framework's overhead, as JSON.

  python scripts/benchmark.py --config=configs/cifar10.py \
      --config.model.n_layer=4 --config.model.n_embd=64 --config.train.batch_size=16

Measures, on synthetic integer data of the config's shape (the input pipeline is not
timed): compile time and median step time (after warm-up) of the framework's sharded
`train_step` (ELBO terms, AdamW, clipping, EMA, metrics) and `eval_step`; and the median
time of a bare jitted forward + backward + Adam update of the same network on a plain
epsilon-MSE loss, with nothing around it. overhead = framework / bare - 1.
"""

import json

from absl import app, flags
from ml_collections import config_flags

from vdm_jax import _cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_MEMORY_ONLY = flags.DEFINE_bool(
  "memory_only",
  False,
  "Only compile the train step (on abstract arrays, nothing allocated) and print its "
  "per-device memory under config.train.sharding.",
)
flags.mark_flags_as_required(["config"])


def main(argv):
  _cli.start(argv)
  from vdm_jax.training import benchmark

  if _MEMORY_ONLY.value:
    print(json.dumps(benchmark.memory(_CONFIG.value), indent=2))
    return
  print(json.dumps(benchmark.benchmark(_CONFIG.value, _STEPS.value, _WARMUP.value), indent=2))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
