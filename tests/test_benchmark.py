"""The benchmark's library (`vdm_jax.training.benchmark`) on a tiny config: it runs and
reports consistent numbers (no timing is asserted: benchmarks print, tests check shape)."""

import pytest
from helpers import tiny_config

from vdm_jax.models import flops
from vdm_jax.training import benchmark


@pytest.fixture(scope="module")
def config(tmp_path_factory):
  c = tiny_config(tmp_path_factory.mktemp("bench"))
  c.train.batch_size = 8
  return c


def test_benchmark_reports_flops_memory_and_overhead(config):
  r = benchmark.benchmark(config, num_steps=1, warmup=0)
  assert r["train_step_s"] > 0 and r["bare_train_step_s"] > 0 and r["eval_step_s"] > 0
  expected = flops.unet_flops_from_config(config, (8, 8, 1), 8, train=True) / 1e12
  assert r["train_step_tflop"] == pytest.approx(expected)
  assert r["train_tflop_per_s"] == pytest.approx(expected / r["train_step_s"])
  # XLA:CPU counts the whole step (convolutions included, and the ELBO and Adam around
  # them): the same order as 3 x the network's forward.
  assert 0.5 < r["xla_cost_analysis_tflop"] / expected < 3.0
  assert r["train_memory"]["argument_bytes"] > 0 and r["config"]["dtype"] == "float32"


def test_layer_loop_compile_times(config):
  # One layout here (each costs a compile; the layouts' equality is in test_precision.py).
  r = benchmark.layer_loop_compile_times(config, layouts=("scan_remat",))
  assert set(r) == {"scan_remat"} and set(benchmark.LAYOUTS) == {"unrolled", "scan", "scan_remat"}
  assert r["scan_remat"]["compile_s"] > 0 and r["scan_remat"]["temp_bytes"] > 0
