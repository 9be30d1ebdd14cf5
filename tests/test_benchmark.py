"""The benchmark's library (`vdm_jax.training.benchmark`) on tiny configs: it runs and
reports consistent numbers (no timing is asserted: benchmarks print, tests check shape)."""

import pytest
from helpers import REPO, tiny_config

from vdm_jax import data
from vdm_jax.config import sibling_config
from vdm_jax.models import flops
from vdm_jax.training import benchmark


def test_benchmark_runs_end_to_end_on_a_small_model(tmp_path):
  # The MLP on toy2d compiles in seconds; the U-Net's FLOP accounting is tested below.
  c = sibling_config(str(REPO / "configs" / "digits.py"), "toy2d.py")
  c.data.data_dir = str(tmp_path)
  c.model.mlp_hidden, c.model.mlp_layers, c.train.batch_size = 32, 2, 8
  r = benchmark.benchmark(c, num_steps=1, warmup=0)
  assert r["train_step_s"] > 0 and r["bare_train_step_s"] > 0 and r["eval_step_s"] > 0
  assert r["framework_overhead"] == pytest.approx(r["train_step_s"] / r["bare_train_step_s"] - 1)
  assert r["train_memory"]["argument_bytes"] > 0 and r["config"]["dtype"] == "float32"
  assert "train_step_tflop" not in r  # counted for the U-Net only


@pytest.mark.slow  # compiles the adaptive model's U-Net step twice
def test_benchmark_runs_the_adaptive_model(tmp_path):
  # Its denoiser takes a per-dimension gamma map and the latent c: the bare step gives both.
  c = tiny_config(tmp_path)
  c.model.kind, c.train.batch_size = "adaptive", 8
  r = benchmark.benchmark(c, num_steps=1, warmup=0)
  assert r["train_step_s"] > 0 and r["bare_train_step_s"] > 0 and r["eval_step_s"] > 0


def test_unet_step_flops_memory_and_layer_loop_compile(tmp_path):
  c = tiny_config(tmp_path)
  c.train.batch_size = 8
  c.model.scan_layers = c.model.remat = True  # the layer loop, compiled once
  compiled, seconds, _ = benchmark._compile_train_step(c)
  r = benchmark.flop_rates(c, data.static_info(c.data), compiled, 0.5)
  expected = flops.unet_flops_from_config(c, (8, 8, 1), 8, train=True) / 1e12
  assert r["train_step_tflop"] == pytest.approx(expected)
  assert r["train_tflop_per_s"] == pytest.approx(expected / 0.5)
  # XLA:CPU counts the whole step (convolutions included, and the ELBO and Adam around
  # them): the same order as 3 x the network's forward.
  assert 0.5 < r["xla_cost_analysis_tflop"] / expected < 3.0
  assert seconds > 0 and benchmark._memory(compiled)["temp_bytes"] > 0
  assert set(benchmark.LAYOUTS) == {"unrolled", "scan", "scan_remat"}
  assert benchmark.layer_loop_compile_times(c, layouts=()) == {}
