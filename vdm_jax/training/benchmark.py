"""Speed and memory of the train and eval steps (`scripts/benchmark.py`).

Benchmarks print numbers; tests never time anything. The "bare" step is the denoiser's
eps-MSE with Adam and nothing else, so `framework_overhead` is what the trainer adds.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdm_jax import data, models
from vdm_jax.evaluation import bpd
from vdm_jax.models import flops as flops_lib
from vdm_jax.runtime import checkpoints
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.training.state import create_train_state, make_optimizer
from vdm_jax.training.step import jit_train_step

__all__ = ["LAYOUTS", "benchmark", "flop_rates", "layer_loop_compile_times", "memory"]


def _time_steps(fn, num_steps: int, warmup: int):
  """Median seconds per call of fn() -> result (blocked on), after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  seconds = []
  for _ in range(num_steps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    seconds.append(time.perf_counter() - t)
  return statistics.median(seconds)


def _compile_train_step(config):
  """Compiles the train step on abstract arrays (nothing allocated); returns (compiled,
  seconds, state shapes)."""
  info = data.static_info(config.data)
  vdm = models.make_model(config, info)
  mesh_lib.check_batch_size(config.train.batch_size, micro_batches=config.train.grad_accum_steps)
  mesh = mesh_lib.make_mesh()
  tx = make_optimizer(config)
  shapes = jax.eval_shape(lambda k: create_train_state(vdm, k, tx), jax.random.key(0))
  sharding = mesh_lib.state_shardings(
    shapes, mesh, config.train.sharding, min_size=config.train.fsdp_min_size
  )
  state = checkpoints.abstract_tree(shapes, sharding)
  batch_sharding = mesh_lib.batch_sharding(mesh)
  batch = {
    "image": jax.ShapeDtypeStruct(
      (config.train.batch_size, *info.shape), np.int32, sharding=batch_sharding
    )
  }
  step_fn = jit_train_step(vdm, config, mesh, sharding)
  t = time.perf_counter()
  compiled = step_fn.lower(state, batch, jax.random.key(0)).compile()
  return compiled, time.perf_counter() - t, shapes


def memory(config) -> dict:
  """Compile time and per-device memory of the train step, from abstract arrays."""
  compiled, seconds, shapes = _compile_train_step(config)
  stats = _memory(compiled)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
  return {
    "config": {
      "n_layer": config.model.n_layer,
      "n_embd": config.model.n_embd,
      "batch_size": config.train.batch_size,
      "sharding": config.train.sharding,
      "dtype": config.model.dtype,
      "scan_layers": config.model.scan_layers,
      "remat": config.model.remat,
      "num_params": int(sum(x.size for x in jax.tree.leaves(shapes.params))),
    },
    "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    "train_compile_s": seconds,
    "state_bytes_total": int(state_bytes),
    "per_device_argument_bytes": stats.get("argument_bytes"),
    "per_device_temp_bytes": stats.get("temp_bytes"),
    "per_device_output_bytes": stats.get("output_bytes"),
  }


LAYOUTS = {"unrolled": (False, False), "scan": (True, False), "scan_remat": (True, True)}
"""The U-Net layer layouts `layer_loop_compile_times` compares: name -> (scan_layers, remat)."""


def layer_loop_compile_times(config, layouts=tuple(LAYOUTS)) -> dict:
  """Compile time and temporary memory of the train step for each of `layouts`: the U-Net's
  blocks "unrolled", as a layer loop ("scan", `model.scan_layers`), and as a
  rematerialised loop ("scan_remat", `model.remat`)."""
  out = {}
  for name in layouts:
    variant = config.copy_and_resolve_references()
    variant.model.scan_layers, variant.model.remat = LAYOUTS[name]
    compiled, seconds, _ = _compile_train_step(variant)
    out[name] = {"compile_s": seconds, "temp_bytes": _memory(compiled).get("temp_bytes")}
  return out


def benchmark(config, num_steps: int, warmup: int) -> dict:
  """Train step, eval step and the bare network's step (fwd+bwd+Adam of the denoiser alone):
  median seconds, examples/s and compile times, on synthetic data of the config's shape."""
  info = data.static_info(config.data)
  vdm = models.make_model(config, info)
  batch_size = config.train.batch_size
  mesh_lib.check_batch_size(batch_size, micro_batches=config.train.grad_accum_steps)
  mesh = mesh_lib.make_mesh()
  replicated = mesh_lib.replicated(mesh)
  rng = np.random.default_rng(0)
  local = {"image": rng.integers(0, info.vocab_size, (batch_size, *info.shape), dtype=np.int32)}
  batch = mesh_lib.to_global(local, mesh)
  key = jax.random.key(0)
  tx = make_optimizer(config)
  state = jax.jit(lambda k: create_train_state(vdm, k, tx), out_shardings=replicated)(key)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  # Framework train step (donates its state, so thread it through).
  step_fn = jit_train_step(vdm, config, mesh, replicated)
  t = time.perf_counter()
  compiled = step_fn.lower(state, batch, key).compile()
  train_compile = time.perf_counter() - t
  holder = {"state": state}

  def one_train_step():
    holder["state"], metrics = compiled(holder["state"], batch, key)
    return metrics

  train_time = _time_steps(one_train_step, num_steps, warmup)
  train_memory = _memory(compiled)

  # Framework eval step.
  eval_fn = bpd.jit_eval_step(vdm, mesh, config.loss.num_steps, explicit_t=True)
  params = holder["state"].ema_params
  eval_batch = mesh_lib.to_global({**local, "index": np.arange(batch_size, dtype=np.int32)}, mesh)
  t_eval = mesh_lib.to_global({"t": rng.uniform(size=batch_size).astype(np.float32)}, mesh)["t"]
  t = time.perf_counter()
  eval_compiled = eval_fn.lower(params, eval_batch, key, t_eval).compile()
  eval_compile = time.perf_counter() - t
  eval_time = _time_steps(lambda: eval_compiled(params, eval_batch, key, t_eval), num_steps, warmup)

  # Bare: the same network, eps-MSE, Adam, nothing else.
  net = vdm.denoiser
  bare_params = holder["state"].params["denoiser"]
  opt = optax.adam(1e-4)
  z = jnp.asarray(rng.normal(size=(batch_size, *info.shape)), jnp.float32)
  eps = jnp.asarray(rng.normal(size=z.shape), jnp.float32)
  gamma = jnp.asarray(rng.uniform(-13.3, 5.0, size=(batch_size,)), jnp.float32)
  extra = {}
  if getattr(vdm, "auxiliary_latent", False):  # the adaptive model: a gamma map and a latent c
    gamma = jnp.broadcast_to(gamma.reshape((-1,) + (1,) * len(info.shape)), z.shape)
    extra["latent"] = jnp.asarray(rng.normal(size=(batch_size, vdm.latent_dim)), jnp.float32)

  @jax.jit
  def bare_step(p, opt_state, dropout_key):
    def loss(p):
      out = net.apply({"params": p}, z, gamma, train=True, rngs={"dropout": dropout_key}, **extra)
      return jnp.mean(jnp.square(out - eps))

    value, grads = jax.value_and_grad(loss)(p)
    updates, opt_state = opt.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, value

  bare = {"p": bare_params, "o": opt.init(bare_params)}

  def one_bare_step():
    bare["p"], bare["o"], value = bare_step(bare["p"], bare["o"], key)
    return value

  t = time.perf_counter()
  jax.block_until_ready(one_bare_step())
  bare_compile = time.perf_counter() - t
  bare_time = _time_steps(one_bare_step, num_steps, warmup)

  result = {
    "config": {
      "data": config.data.name,
      "shape": list(info.shape),
      "n_layer": config.model.n_layer,
      "n_embd": config.model.n_embd,
      "batch_size": batch_size,
      "num_params": int(num_params),
      **{k: config.model[k] for k in ("dtype", "scan_layers", "remat") if k in config.model},
    },
    "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
    "jax": jax.__version__,
    "train_step_s": train_time,
    "train_examples_per_s": batch_size / train_time,
    "train_compile_s": train_compile,
    "train_memory": train_memory,
    "eval_step_s": eval_time,
    "eval_examples_per_s": batch_size / eval_time,
    "eval_compile_s": eval_compile,
    "bare_train_step_s": bare_time,
    "bare_compile_s": bare_compile,
    "framework_overhead": train_time / bare_time - 1.0,
    "timed_steps": num_steps,
  }
  return result | flop_rates(config, info, compiled, train_time)


def flop_rates(config, info, compiled, step_seconds: float) -> dict:
  """FLOPs of a compiled train step and the rate achieved: the U-Net's counted analytically
  (3 x forward; XLA's GPU cost analysis leaves cuDNN convolutions out), and XLA's own
  count. Empty for other denoisers."""
  if config.model.denoiser != "unet":
    return {}
  step_flops = flops_lib.unet_flops_from_config(config, info, config.train.batch_size, train=True)
  return {
    "train_step_tflop": step_flops / 1e12,
    "train_tflop_per_s": step_flops / step_seconds / 1e12,
    "xla_cost_analysis_tflop": _xla_flops(compiled),
  }


def _memory(compiled) -> dict:
  """Per-device bytes of a compiled step (`memory_analysis()`), where the backend says."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  names = ("argument", "output", "temp", "generated_code")
  return {f"{n}_bytes": int(getattr(stats, f"{n}_size_in_bytes", 0)) for n in names}


def _xla_flops(compiled) -> float | None:
  """XLA's own FLOP count of a compiled step in TFLOP (counts convolutions on CPU, not
  cuDNN's on GPU), or None where the backend gives none."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return None if flops is None else float(flops) / 1e12
