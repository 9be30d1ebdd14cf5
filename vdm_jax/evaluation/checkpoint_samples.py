"""Samples of a trained checkpoint, drawn over every device and written as .npz and a grid.

(The samplers' mathematics is `vdm_jax.sampling`; this module was called
`vdm_jax.evaluation.sampling` before, a name that still imports, with a warning.)

Sample n is drawn from `fold_in(key, n)`, one sample per key, so the samples do not
depend on how many devices share the work (the samples are split over the mesh's "data"
axis; their count is padded to a multiple of the device count and cut back).
"""

from __future__ import annotations

import functools
import io
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax._arith import round_up
from vdm_jax.evaluation import images
from vdm_jax.runtime import mesh as mesh_lib
from vdm_jax.runtime import signals as _signals
from vdm_jax.runtime import storage

__all__ = [
  "class_grids",
  "draw_samples",
  "jit_sampler",
  "render_class_grids",
  "render_samples",
  "sample_checkpoint",
  "write_sample_grid",
]


@functools.lru_cache(maxsize=16)
def jit_sampler(model, mesh, options: tuple = ()):
  """`(params, keys [N]) -> int32 samples [N, *data_shape]`, jitted over `mesh` once per
  (model, mesh, options); `options` are `model.sample`'s keyword options as sorted
  (name, value) pairs (e.g. (("num_steps", 200),) for a diffusion model)."""
  kwargs = dict(options)
  keys_sharding = mesh_lib.batch_sharding(mesh)
  return jax.jit(
    jax.vmap(lambda params, key: model.sample(params, key, 1, **kwargs)[0], in_axes=(None, 0)),
    in_shardings=(mesh_lib.replicated(mesh), keys_sharding),
    out_shardings=keys_sharding,
  )


def draw_samples(model, params, key, num_samples: int, mesh, **options) -> np.ndarray:
  """`num_samples` samples (numpy int32 `[N, *data_shape]`), split over the devices.

  Args:
    model: a `models.Model`; params: its (EMA) params, replicated.
    key: sample n uses `fold_in(key, n)`.
    options: `model.sample`'s options (diffusion: num_steps, method, decode).
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
  n_dev = jax.device_count()
  padded = round_up(num_samples, n_dev)
  # Made by a jitted function with a global output sharding: the same call on every
  # process (several processes cannot device_put host data to devices they do not own).
  keys = jax.jit(
    lambda key: jax.vmap(lambda n: jax.random.fold_in(key, n))(jnp.arange(padded)),
    out_shardings=mesh_lib.batch_sharding(mesh),
  )(key)
  fn = jit_sampler(model, mesh, tuple(sorted(options.items())))
  return np.asarray(mesh_lib.gather(fn(params, keys)))[:num_samples]


def write_sample_grid(samples, vocab_size: int, path: str, *, scale: int = 4) -> np.ndarray:
  """Writes image samples `[N, H, W, C]` as one PNG grid at `path` (process 0 only);
  returns the grid."""
  grid = images.image_grid(samples, vocab_size, scale=scale)
  if jax.process_index() == 0:
    storage.makedirs(storage.dirname(storage.resolve(path)))
    images.save_png(path, grid)
  return grid


def sample_checkpoint(
  run,
  *,
  num_samples: int = 64,
  num_steps: int = 1000,
  method: str = "ancestral",
  seed: int = 0,
  output: str | None = None,
  label: int | None = None,
  guidance: float = 0.0,
) -> dict:
  """Draws samples from a loaded checkpoint's EMA params (`runs.load_run`) and writes
  `<output>.npz` (and, for images, `<output>.png`; default prefix in the work directory);
  prints nothing. A model without diffusion time (the Gaussian VAE) ignores `num_steps`
  and `method`; `label` and `guidance` are a class-conditional model's (`sampling.sample`).

  Returns:
    {"paths": the files written, "seconds": the sampling time (compilation included),
    "num_samples", "method", "num_steps", "checkpoint_step"}: `render_samples` prints it.
  """
  model, mesh, params, step, workdir = run.model, run.mesh, run.params, run.step, run.workdir
  options = {"num_steps": num_steps, "method": method} if model.diffusion_time else {}
  if label is not None or guidance:
    if not getattr(model, "num_classes", 0):
      raise ValueError(
        f"--label/--guidance need a class-conditional model; the run in {workdir} is not one "
        "(config.model.conditional=False)."
      )
    options |= {"label": label, "guidance": float(guidance)}
  start = time.perf_counter()
  # One compiled call: with the CLI's handlers a signal during it exits at once.
  with _signals.exit_at_once("while drawing samples; nothing was written"):
    samples = draw_samples(model, params, jax.random.key(seed), num_samples, mesh, **options)
  seconds = time.perf_counter() - start
  tag = "" if label is None else f"_label{label}_w{guidance:g}"
  prefix = output or storage.join(
    workdir, f"samples_step{step}_{method}_T{num_steps}{tag}_seed{seed}"
  )
  written = [prefix + ".npz"]
  if jax.process_index() == 0:
    storage.makedirs(storage.dirname(storage.resolve(prefix)))
    buffer = io.BytesIO()
    np.savez(buffer, samples=samples)
    storage.write_atomic(prefix + ".npz", buffer.getvalue())
  if samples.ndim == 4:
    write_sample_grid(samples, model.vocab_size, prefix + ".png")
    written.append(prefix + ".png")
  return {
    "paths": written,
    "seconds": seconds,
    "num_samples": num_samples,
    "method": method,
    "num_steps": num_steps,
    "checkpoint_step": step,
  }


def render_samples(result: dict) -> str:
  """`sample_checkpoint`'s result as one line: what was drawn, how fast, and where it went."""
  return (
    f"{result['num_samples']} samples ({result['method']}, T={result['num_steps']}, "
    f"step {result['checkpoint_step']}) in {result['seconds']:.1f} s (compile included): "
    f"{', '.join(result['paths'])}"
  )


def class_grids(
  run,
  *,
  output: str,
  guidance=(0.0,),
  per_class: int = 8,
  num_steps: int = 20,
  seed: int = 0,
  scale: int = 3,
) -> dict:
  """Guided samples of a class-conditional image model, a row per class, one PNG per weight.

  Row y holds `per_class` samples of class y drawn with DPM-Solver++ 2M in `num_steps`
  steps and guidance weight W (`sampling.guided_eps`), decoded by sampling the exact
  decoder. Sample n of every row and weight is drawn from the key `fold_in(key(seed), n)`,
  exactly as `sample_checkpoint(method="dpm_solver", label=y, guidance=W, seed=seed)`
  draws its sample n. Labels and W are inputs of one compiled function, so all classes
  and weights cost one compilation. Writes, per W, the PNG `output` with "{w}" replaced by
  W and the samples `[classes, per_class, *data_shape]` as the .npz beside it; prints
  nothing.

  Args:
    run: a loaded class-conditional run of images (`runs.load_run`).
    output: PNG path; needs "{w}" when there are several weights.
    guidance: the weights W >= 0.
    per_class, num_steps, seed: samples per class, solver steps, seed.
    scale: pixels per data pixel in the PNG.

  Returns:
    {"paths": [(png, npz) per W], "seconds": [per W; the first includes compilation],
    "guidance", "num_classes", "per_class", "num_steps", "checkpoint_step"}:
    `render_class_grids` prints it.
  """
  model = run.model
  weights = [float(w) for w in guidance]
  if not weights or any(not w >= 0 for w in weights):
    raise ValueError(f"guidance: give weights W >= 0, got {list(guidance)}.")
  if len(weights) > 1 and "{w}" not in output:
    raise ValueError(
      f"output={output!r} has no '{{w}}' for the weight: {len(weights)} grids would "
      "overwrite each other (e.g. grid_w{w}.png)."
    )
  num_classes = getattr(model, "num_classes", 0)
  if not num_classes or len(model.data_shape) != 3:
    raise ValueError(f"{run.workdir}: not a class-conditional model of images.")

  def one(params, key, label, w):
    options = {"num_steps": num_steps, "method": "dpm_solver", "label": label, "guidance": w}
    return model.sample(params, key, 1, **options)[0]

  draw = jax.jit(jax.vmap(one, in_axes=(None, 0, 0, None)))
  key = jax.random.key(seed)
  keys = jnp.tile(
    jax.vmap(lambda n: jax.random.fold_in(key, n))(jnp.arange(per_class)), num_classes
  )
  labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)
  paths, seconds = [], []
  for w in weights:
    start = time.perf_counter()
    kept = "the grids of the weights before it were written" if paths else "nothing was written"
    with _signals.exit_at_once(f"while drawing the grid of W={w:g}; {kept}"):
      samples = np.asarray(draw(run.params, keys, labels, jnp.float32(w)))
    seconds.append(time.perf_counter() - start)
    rows = samples.reshape(num_classes, per_class, *model.data_shape)
    png = output.replace("{w}", f"{w:g}")
    npz = os.path.splitext(png)[0] + ".npz"
    if jax.process_index() == 0:
      storage.makedirs(storage.dirname(storage.resolve(png)))
      buffer = io.BytesIO()
      np.savez(buffer, samples=rows, labels=np.arange(num_classes), guidance=w)
      storage.write_atomic(npz, buffer.getvalue())
      images.save_png(png, _rows_grid(rows, model.vocab_size, scale))
    paths.append((png, npz))
  return {
    "paths": paths,
    "seconds": seconds,
    "guidance": weights,
    "num_classes": num_classes,
    "per_class": per_class,
    "num_steps": num_steps,
    "checkpoint_step": run.step,
  }


def _rows_grid(rows: np.ndarray, vocab_size: int, scale: int) -> np.ndarray:
  """uint8 image of `rows` `[R, N, H, W, C]`: a strip per row, images side by side, one
  white pixel between neighbours."""
  tiles = [[images.image_grid(image[None], vocab_size) for image in r] for r in rows]
  strips = [np.concatenate([r[0]] + [t[:, 1:] for t in r[1:]], 1) for r in tiles]
  grid = np.concatenate([strips[0]] + [s[1:] for s in strips[1:]], 0)
  return grid.repeat(scale, axis=0).repeat(scale, axis=1)


def render_class_grids(result: dict) -> str:
  """`class_grids`'s result as a line per weight."""
  return "\n".join(
    f"{result['num_classes']} classes x {result['per_class']} samples (dpm_solver, "
    f"T={result['num_steps']}, W={w:g}, step {result['checkpoint_step']}) in {s:.1f} s"
    f"{' (compilation included)' if i == 0 else ''}: {png}, {npz}"
    for i, (w, s, (png, npz)) in enumerate(
      zip(result["guidance"], result["seconds"], result["paths"], strict=True)
    )
  )
