"""PNGs of a class-conditional model's guided samples: a row per class, one file per W.

  python scripts/class_grid.py --workdir=runs/digits_cond --guidance=0,1,3 \
      --output=grid_w{w}.png

Row y holds --per_class samples of class y drawn with DPM-Solver++ 2M in --num_steps
steps, guided by weight W (`sampling.guided_eps`), decoded with the exact decoder. Sample
n of every row and every W starts from the key `fold_in(key(seed), n)`, the draw
`vdm-sample --method=dpm_solver --label=y --guidance=W --seed=seed` makes for its sample
n. All classes and weights run through one compiled function (labels and W are its
inputs), so the grids cost one compilation, not one per class and weight.
"""

from absl import flags

from vdm_jax import _cli

_CONFIG = _cli.define_config(
  "Default: the run's record. A name, .py file or config.json.", required=False
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of a class-conditional run.")
_GUIDANCE = flags.DEFINE_list("guidance", ["0"], "Guidance weights W >= 0, one PNG each.")
_PER_CLASS = flags.DEFINE_integer("per_class", 8, "Samples per class (one row each).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", 20, "DPM-Solver steps T.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_SCALE = flags.DEFINE_integer("scale", 3, "Pixels per data pixel in the PNG.")
_OUTPUT = flags.DEFINE_string("output", None, "PNG path; {w} is replaced by each W.")
flags.mark_flags_as_required(["workdir", "output"])
for _name in ["per_class", "num_steps", "scale"]:
  _cli.check_flag_range(_name, minimum=1)
_cli.check_flag_range("seed", minimum=0)


def _sampler(vdm, num_steps: int):
  """(params, key, label, w) -> one int32 sample, as `sampling.sample(method="dpm_solver",
  decode="sample")` draws it for a batch of one with that label and guidance."""
  import jax
  import jax.numpy as jnp

  from vdm_jax import elbo, predictions, sampling

  def one(params, key, label, w):
    key_init, _, key_dec = jax.random.split(key, 3)
    z = jax.random.normal(key_init, (1, *vdm.data_shape))
    cond = {"label": label[None]}
    null = {"label": jnp.full((1,), vdm.num_classes, jnp.int32)}

    def x_hat_fn(z_t, g):
      eps = sampling.guided_eps(
        vdm.eps_hat(params, z_t, g, batch=cond), vdm.eps_hat(params, z_t, g, batch=null), w
      )
      return predictions.x_from_eps(z_t, eps, g)

    gammas = vdm.gamma(params, 1.0 - jnp.arange(num_steps + 1) / num_steps)
    z_0 = sampling.dpm_solver_2m(x_hat_fn, z, gammas)
    logits = elbo.decoder_logits(z_0, vdm.gamma(params, jnp.zeros((1,))), vocab_size=vdm.vocab_size)
    return jax.random.categorical(key_dec, logits).astype(jnp.int32)[0]

  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, None)))


def main(argv):
  _cli.start(argv, None, _CONFIG.value)
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np

  from vdm_jax.evaluation import images, runs

  weights = [float(w) for w in _GUIDANCE.value]
  if any(not w >= 0 for w in weights):
    raise SystemExit(f"--guidance: every W must be >= 0, got {_GUIDANCE.value}.")
  run_ = runs.load_run(_WORKDIR.value, config=_CONFIG.value)
  vdm, n = run_.model, _PER_CLASS.value
  if not getattr(vdm, "num_classes", 0) or len(vdm.data_shape) != 3:
    raise SystemExit(f"{_WORKDIR.value}: not a class-conditional model of images.")
  draw = _sampler(vdm, _NUM_STEPS.value)
  key = jax.random.key(_SEED.value)
  keys = jnp.tile(jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n)), vdm.num_classes)
  labels = jnp.repeat(jnp.arange(vdm.num_classes, dtype=jnp.int32), n)
  for w in weights:
    start = time.perf_counter()
    samples = np.asarray(draw(run_.params, keys, labels, jnp.float32(w)))
    seconds = time.perf_counter() - start
    rows = samples.reshape(vdm.num_classes, n, *vdm.data_shape)
    # A strip per class: its images side by side, one white pixel between them.
    tiles = [[images.image_grid(image[None], vdm.vocab_size) for image in r] for r in rows]
    strips = [np.concatenate([r[0]] + [t[:, 1:] for t in r[1:]], 1) for r in tiles]
    grid = np.concatenate([strips[0]] + [s[1:] for s in strips[1:]], 0)
    grid = grid.repeat(_SCALE.value, axis=0).repeat(_SCALE.value, axis=1)
    path = _OUTPUT.value.replace("{w}", f"{w:g}")
    images.save_png(path, grid)
    print(
      f"{vdm.num_classes} classes x {n} samples (dpm_solver, T={_NUM_STEPS.value}, W={w:g}, "
      f"step {run_.step}) in {seconds:.1f} s (the first includes compilation): {path}"
    )


if __name__ == "__main__":
  _cli.run(main, reads_run=True)
