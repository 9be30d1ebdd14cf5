"""What `vdm-evaluate` computes and prints: one checkpoint's bits/dim, its table and files.

`evaluate_checkpoint` evaluates a loaded checkpoint's ELBO (or probability-flow ODE) and
on process 0 writes the JSON (and, for a diffusion model's ELBO, the decomposition over t
as CSV and PNG); it prints nothing: `render_evaluation` of its result is the table. The
JSON is strict (`workdir.dumps_strict`): a number that is not defined, such as `pass_se`
of one pass or `bpd_se` of one example, is `null` (None in the returned dict), never NaN.
"""

from __future__ import annotations

import csv
import io
import os

import jax
import jax.numpy as jnp

from vdm_jax import _deps, data
from vdm_jax.evaluation import bpd, runs
from vdm_jax.runtime import signals as _signals
from vdm_jax.runtime import storage
from vdm_jax.runtime import workdir as workdir_lib

__all__ = ["evaluate_checkpoint", "format_table", "render_evaluation", "write_decomposition"]


def evaluate_checkpoint(
  run: runs.Run,
  *,
  split: str = "test",
  method: str = "elbo",
  num_steps: int | None = None,
  passes: int = 1,
  batch_size: int | None = None,
  exact_time_sum: bool = False,
  num_bins: int = 20,
  ode_tol: float = 1e-4,
  seed: int | None = None,
  output: str | None = None,
  command: str = "",
) -> dict:
  """Bits/dim of a loaded checkpoint (`runs.load_run`); returns the JSON dict (as written:
  non-finite numbers are None, see `workdir.to_strict_json`), whose "files" names what was
  written (empty on processes other than 0). Prints nothing (`render_evaluation`).

  `seed` (default: the run's, `bpd.evaluation_seed(config)`, the one the evaluation at the
  end of training used, so that both give the same bits/dim) keys t, the noise and the
  dequantisation; the JSON records the seed used.

  Raises ValueError for options a model does not support (a VAE has no diffusion time:
  `num_steps`, `exact_time_sum` and `method="ode"` need a diffusion model), and
  `bpd.NonFiniteEvaluationError` (a ValueError), writing nothing, if the bits/dim is NaN
  or infinite.
  """
  if method not in ("elbo", "ode"):
    raise ValueError(f"Unknown method {method!r}; choose 'elbo' or 'ode'.")
  model, mesh, params, step, config = run.model, run.mesh, run.params, run.step, run.config
  data.lookup(config.data).check_split(split)
  workdir = run.workdir
  seed = bpd.evaluation_seed(config, seed)
  key = jax.random.key(seed)
  num_steps = config.loss.num_steps if num_steps is None else num_steps
  if not model.diffusion_time and (num_steps or exact_time_sum or method == "ode"):
    raise ValueError(
      f"config.model.kind={config.model.kind!r} has no diffusion time: --num_steps, "
      "--exact_time_sum and --method=ode apply to diffusion models (VDMs) only."
    )
  tag = f"{split}_step{step}_" + (
    "ode" if method == "ode" else f"T{num_steps}" + ("_exact" if exact_time_sum else "")
  )
  output = output or storage.join(workdir, f"eval_{tag}.json")
  rows = None
  if method == "ode":
    from vdm_jax.evaluation import ode  # the optional `ode` extra (diffrax)

    result = ode.evaluate_ode(
      model,
      params,
      config,
      mesh,
      split=split,
      key=key,
      batch_size=batch_size,
      rtol=ode_tol,
      atol=ode_tol,
      progress=True,
    )
  else:
    result = bpd.evaluate(
      model,
      params,
      config,
      mesh,
      split=split,
      num_steps=num_steps,
      passes=passes,
      key=key,
      batch_size=batch_size,
      exact_time_sum=exact_time_sum,
      progress=True,
    )
  _check_finite(result, run, split)
  if method == "elbo" and model.diffusion_time:
    rows = bpd.diffusion_by_time(result, model, params, num_bins=num_bins)
  result = bpd.without_arrays(result)
  if model.diffusion_time:
    gamma = jax.device_get(model.gamma(params, jnp.array([0.0, 1.0])))
    result |= {"gamma_0": float(gamma[0]), "gamma_1": float(gamma[1])}
  result |= {
    "method": method,
    "model": config.model.kind,
    "model_dtype": config.model.dtype,
    "checkpoint_step": step,
    "data": config.data.name,
    "seed": seed,
    "exact_time_sum": exact_time_sum,
    "command": command,
    "files": {},
  }
  result = workdir_lib.to_strict_json(result)
  _signals.check("during the evaluation; nothing was written")  # not after the JSON
  if jax.process_index() != 0:
    return result
  storage.makedirs(storage.dirname(storage.resolve(output)))
  if rows is not None:  # the decomposition first: the JSON, written last, lists it
    base = os.path.splitext(output)[0]
    png = write_decomposition(
      rows, base + "_by_t.csv", base + "_by_t.png", config.data.name, num_steps
    )
    result["files"]["diffusion by t"] = f"{base}_by_t.csv, {png}"
  result["files"]["JSON"] = output
  workdir_lib.write_json_atomic(output, workdir_lib.dumps_strict(result, indent=2))
  return result


def render_evaluation(result: dict) -> str:
  """`evaluate_checkpoint`'s result as printed by `vdm-evaluate`: the table, the files
  written and the command that reproduces it."""
  table = format_table(
    result,
    split=result["split"],
    num_steps=result.get("num_steps", 0),
    exact=result.get("exact_time_sum", False),
    files=result.get("files", {}),
  )
  return f"{table}\n  reproduce: {result['command']}"


def _check_finite(result: dict, run: runs.Run, split: str) -> None:
  """Raises `bpd.NonFiniteEvaluationError` (nothing written) for a non-finite bits/dim."""
  directory = storage.join(run.workdir, "checkpoints")
  kept = sorted(int(n) for n in storage.listdir(directory) if n.isdigit() and int(n) < run.step)
  other = (
    f"an earlier checkpoint may be intact (--step={kept[-1]}; kept: {kept})"
    if kept
    else "no earlier checkpoint is kept"
  )
  bpd.check_finite(
    result,
    run.params,
    f"Checkpoint step {run.step} of {run.workdir} ({split} split)",
    f"Nothing was written; {other}.",
  )


def _number(value, digits: int) -> str:
  """`value` with `digits` decimals; "n/a" for None (a number the JSON records as not defined)."""
  return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(result: dict, *, split: str, num_steps: int, exact: bool, files: dict) -> str:
  """The evaluation's result (as written to JSON: None for what is not defined) as aligned
  text rows."""
  diffusion = "gamma_0" in result
  bpd, se = _number(result["bpd"], 4), _number(result["bpd_se"], 4)
  table = [
    ("data / split", f"{result['data']} / {split} ({result['num_examples']} examples)"),
    ("model / checkpoint step", f"{result['model']} / {result['checkpoint_step']}"),
    ("method", result["method"]),
    ("bits/dim", f"{bpd} +- {se} (standard error over examples)"),
  ]
  if "bpd_conditional" in result:  # a class-conditional model: "bpd" is the marginal bound
    table[3] = ("bits/dim (marginal)", f"{bpd} +- {se}: -log sum_y p(y) exp ELBO_y, uniform p(y)")
    for name, what in [("conditional", "-log p(x | y), own label"), ("null", "null label")]:
      value = f"{_number(result[f'bpd_{name}'], 4)} +- {_number(result[f'bpd_{name}_se'], 4)}"
      table.insert(4 if name == "conditional" else 5, (f"bits/dim ({name})", f"{value}: {what}"))
    table.insert(4, ("marginal's label weights", str(result.get("marginal_weights", "n/a"))))
  if diffusion:
    gammas = f"{_number(result['gamma_0'], 3)}, {_number(result['gamma_1'], 3)}"
    table.append(("gamma(0), gamma(1)", gammas))
  if result["method"] == "elbo":
    per_pass = ", ".join(_number(b, 4) for b in result["pass_bpd"])
    rows_at_3 = [("passes", f"{result['passes']} (per pass: {per_pass})")]
    if result["passes"] > 1:
      mc = _number(result["pass_se"], 4)
      rows_at_3.append(("Monte Carlo error", f"+- {mc} (pass spread / sqrt(P))"))
    if diffusion:
      kind = "continuous" if num_steps == 0 else "discrete"
      summed = ", diffusion summed over all steps" if exact else ""
      rows_at_3.insert(0, ("T", f"{num_steps} ({kind}){summed}"))
    table[3:3] = rows_at_3
    of = " (conditional)" if "bpd_conditional" in result else ""
    table += [(f"{t} bits/dim{of}", _number(result[f"{t}_bpd"], 4)) for t in result["terms"]]
  table += list(files.items())
  width = max(len(label) for label, _ in table)
  return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in table)


def write_decomposition(rows, csv_path, png_path, name, num_steps) -> str:
  """Writes the CSV, and the PNG if matplotlib is installed (local paths or `gs://` objects,
  each atomically); returns what became of the PNG."""
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  storage.write_atomic(csv_path, text.getvalue())
  if not _deps.available("matplotlib"):
    return "no PNG (pip install 'vdm_jax[plots]')"
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.5))
  centres = [0.5 * (r["gamma_lo"] + r["gamma_hi"]) for r in rows]
  widths = [r["gamma_hi"] - r["gamma_lo"] for r in rows]
  ax.bar(centres, [r["bpd"] for r in rows], width=widths, edgecolor="k", linewidth=0.3)
  ax.set_xlabel("gamma = -log SNR")
  ax.set_ylabel("bits/dim in bin")
  ax.set_title(f"{name}: diffusion term by noise level (T={num_steps or 'inf'})")
  fig.tight_layout()
  image = io.BytesIO()
  fig.savefig(image, dpi=120, format="png")
  plt.close(fig)
  storage.write_atomic(png_path, image.getvalue())
  return png_path
