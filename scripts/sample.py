"""Draw samples from a trained VDM (or Gaussian VAE) and write a PNG grid and an .npz (also `vdm-sample`).

  python scripts/sample.py --config=configs/digits.py --workdir=runs/digits \
      --num_samples=64 --num_steps=1000 --method=ancestral --seed=0

ancestral: the seed's reverse process p(z_s|z_t) = N(mu_theta, sigma_q^2) with T steps;
ddim: the deterministic DDIM update. Integer data from the exact discrete decoder.
"""

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of the training run.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Number of samples.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 1000, "Reverse steps T.")
_METHOD = flags.DEFINE_enum("method", "ancestral", ["ancestral", "ddim"], "Sampler.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUTPUT = flags.DEFINE_string("output", None, "Output path prefix (default: in the workdir).")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "Several processes: host:port of process 0 (all processes)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one's index.")
flags.mark_flags_as_required(["config", "workdir"])
flags.register_validator("num_samples", lambda n: n > 0, "--num_samples must be a positive int.")
flags.register_validator("num_steps", lambda n: n > 0, "--num_steps must be a positive int.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vdm_jax._cli import enable_compilation_cache, initialize_distributed, quiet_logging

  enable_compilation_cache()
  quiet_logging()
  initialize_distributed(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_CONFIG.value.distributed
  )
  import time

  import jax
  import numpy as np

  from vdm_jax import sampling, train
  from vdm_jax.vdm import VDM

  vdm, _, params, step = train.load_ema_params(_CONFIG.value, _WORKDIR.value, step=_STEP.value)
  if isinstance(vdm, VDM):
    fn = jax.jit(
      lambda p, k: sampling.sample(
        vdm, p, k, _NUM_SAMPLES.value, num_steps=_NUM_STEPS.value, method=_METHOD.value
      )
    )
  else:  # the Gaussian VAE: z ~ N(0, I), k ~ p(k | z); --num_steps and --method do not apply
    fn = jax.jit(lambda p, k: vdm.sample(p, k, _NUM_SAMPLES.value))
  start = time.perf_counter()
  samples = np.asarray(jax.device_get(fn(params, jax.random.key(_SEED.value))))
  seconds = time.perf_counter() - start
  prefix = _OUTPUT.value or os.path.join(
    _WORKDIR.value, f"samples_step{step}_{_METHOD.value}_T{_NUM_STEPS.value}_seed{_SEED.value}"
  )
  np.savez(prefix + ".npz", samples=samples)
  written = [prefix + ".npz"]
  if samples.ndim == 4:
    sampling.save_png(prefix + ".png", sampling.image_grid(samples, vdm.vocab_size, scale=4))
    written.append(prefix + ".png")
  print(
    f"{_NUM_SAMPLES.value} samples ({_METHOD.value}, T={_NUM_STEPS.value}, step {step}) "
    f"in {seconds:.1f} s (compile included): {', '.join(written)}"
  )


def run():
  app.run(main)


if __name__ == "__main__":
  run()
