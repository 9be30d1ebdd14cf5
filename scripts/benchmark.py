"""Train-step and eval-step throughput of a config, and the framework's overhead, as JSON.

  vdm-benchmark --config=cifar10 \
      --config.model.n_layer=4 --config.model.n_embd=64 --config.train.batch_size=16

Measures, on synthetic integer data of the config's shape (the input pipeline is not
timed): compile time and median step time (after warm-up) of the framework's sharded
`train_step` (ELBO terms, AdamW, clipping, EMA, metrics) and `eval_step`; and the median
time of a bare jitted forward + backward + Adam update of the same network on a plain
epsilon-MSE loss, with nothing around it. overhead = framework / bare - 1. Also the
compiled train step's per-device memory (`memory_analysis()`), its FLOPs (analytic for the
U-Net: 3 x forward, `vdm_jax.models.flops`; and XLA's own count, which on GPU leaves out
cuDNN's convolutions) and the achieved TFLOP/s. `--dtype=bfloat16` overrides
config.model.dtype; `--layer_loop` adds the compile time (and temporaries) of the train step
unrolled, as a layer loop and as a rematerialised loop; `--memory_only` compiles on
abstract arrays and allocates nothing (for configs larger than this machine).
"""

from absl import flags

from vdm_jax import _cli

_CONFIG = _cli.define_config("Config: a packaged name (cifar10), a .py file or a config.json.")

_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after warm-up).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_MEMORY_ONLY = flags.DEFINE_bool(
  "memory_only",
  False,
  "Only compile the train step (on abstract arrays, nothing allocated) and print its "
  "per-device memory under config.train.sharding.",
)
_DTYPE = flags.DEFINE_enum(
  "dtype", None, ["float32", "bfloat16"], "Overrides config.model.dtype (compute dtype)."
)
_LAYER_LOOP = flags.DEFINE_bool(
  "layer_loop",
  False,
  "Also compile the train step unrolled, as a layer loop, and as a rematerialised loop "
  "(model.scan_layers / model.remat) and print the compile times.",
)

_cli.check_flag_range("steps", minimum=1)
_cli.check_flag_range("warmup", minimum=0)


def main(argv):
  _cli.start(argv, config=_CONFIG.value)
  from vdm_jax.runtime import workdir
  from vdm_jax.training import benchmark

  config = _CONFIG.value
  if _DTYPE.value is not None:
    config = config.copy_and_resolve_references()
    config.model.dtype = _DTYPE.value
  if _MEMORY_ONLY.value:
    result = benchmark.memory(config)
  else:
    result = benchmark.benchmark(config, _STEPS.value, _WARMUP.value)
  if _LAYER_LOOP.value:
    result["layer_loop"] = benchmark.layer_loop_compile_times(config)
  print(workdir.dumps_strict(result, indent=2))


def run():
  _cli.run(main)


if __name__ == "__main__":
  run()
