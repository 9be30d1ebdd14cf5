"""Test bits/dim of a trained VDM (or Gaussian VAE), exactly and with error bars (also installed as `vdm-evaluate`).

  python scripts/evaluate.py --config=configs/digits.py --workdir=runs/digits
  python scripts/evaluate.py --config=configs/digits.py --workdir=runs/digits \
      --num_steps=1000 --exact_time_sum --passes=3
  python scripts/evaluate.py --config=configs/digits.py --workdir=runs/digits --method=ode

Loads the EMA parameters of the latest checkpoint (or --step) onto the current devices,
visits every example of the split once per pass in a fixed order (the last batch padded
and masked), and prints a table; writes JSON (--output), and for the ELBO a CSV and a PNG
of the diffusion term decomposed over t.
"""

import json
import os
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Work directory of the training run.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate.")
_METHOD = flags.DEFINE_enum("method", "elbo", ["elbo", "ode"], "ELBO or probability-flow ODE.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "T for the ELBO (0 = continuous time).")
_PASSES = flags.DEFINE_integer("passes", 1, "Passes over the split (ELBO).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Global batch size.")
_EXACT = flags.DEFINE_bool("exact_time_sum", False, "Sum the diffusion term over all T steps.")
_NUM_BINS = flags.DEFINE_integer("num_bins", 20, "Bins of t for the decomposition (sampled t).")
_ODE_TOL = flags.DEFINE_float("ode_tol", 1e-4, "rtol = atol of the ODE solver (--method=ode).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of t, noise and dequantisation.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON output (default: in the workdir).")
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "Several processes: host:port of process 0 (all processes)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Several processes: this one's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _table(rows):
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from vdm_jax._cli import enable_compilation_cache, initialize_distributed, quiet_logging

  enable_compilation_cache()
  quiet_logging()
  initialize_distributed(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_CONFIG.value.distributed
  )
  import jax

  from vdm_jax import evaluation, train
  from vdm_jax.vdm import VDM

  config = _CONFIG.value
  vdm, mesh, params, step = train.load_ema_params(config, _WORKDIR.value, step=_STEP.value)
  key = jax.random.key(_SEED.value)
  num_steps = config.loss.num_steps if _NUM_STEPS.value is None else _NUM_STEPS.value
  is_vdm = isinstance(vdm, VDM)
  if not is_vdm and (num_steps or _EXACT.value or _METHOD.value == "ode"):
    raise app.UsageError(
      f"config.model.kind={config.model.kind!r} has no diffusion time: --num_steps, "
      "--exact_time_sum and --method=ode apply to VDMs only."
    )
  tag = f"{_SPLIT.value}_step{step}_" + (
    "ode" if _METHOD.value == "ode" else f"T{num_steps}" + ("_exact" if _EXACT.value else "")
  )
  output = _OUTPUT.value or os.path.join(_WORKDIR.value, f"eval_{tag}.json")
  if _METHOD.value == "ode":
    result = evaluation.evaluate_ode(
      vdm,
      params,
      config,
      mesh,
      split=_SPLIT.value,
      key=key,
      batch_size=_BATCH_SIZE.value,
      rtol=_ODE_TOL.value,
      atol=_ODE_TOL.value,
      progress=True,
    )
  else:
    result = evaluation.evaluate(
      vdm,
      params,
      config,
      mesh,
      split=_SPLIT.value,
      num_steps=num_steps,
      passes=_PASSES.value,
      key=key,
      batch_size=_BATCH_SIZE.value,
      exact_time_sum=_EXACT.value,
      progress=True,
    )
    rows = (
      evaluation.diffusion_by_time(result, vdm, params, num_bins=_NUM_BINS.value)
      if is_vdm
      else None
    )
    result = evaluation.public(result)
  if is_vdm:
    gamma = jax.device_get(vdm.gamma(params, jax.numpy.array([0.0, 1.0])))
    result |= {"gamma_0": float(gamma[0]), "gamma_1": float(gamma[1])}
  result |= {
    "method": _METHOD.value,
    "model": config.model.kind,
    "checkpoint_step": step,
    "data": config.data.name,
    "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
  }
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(result, f, indent=2)
  table = [
    ("data / split", f"{config.data.name} / {_SPLIT.value} ({result['num_examples']} examples)"),
    ("model / checkpoint step", f"{config.model.kind} / {step}"),
    ("method", _METHOD.value),
    ("bits/dim", f"{result['bpd']:.4f} +- {result['bpd_se']:.4f} (standard error over examples)"),
  ]
  if is_vdm:
    table.append(("gamma(0), gamma(1)", f"{result['gamma_0']:.3f}, {result['gamma_1']:.3f}"))
  if _METHOD.value == "elbo":
    per_pass = ", ".join(f"{b:.4f}" for b in result["pass_bpd"])
    rows_at_3 = [("passes", f"{result['passes']} (per pass: {per_pass})")]
    if result["passes"] > 1:
      rows_at_3.append(("Monte Carlo error", f"+- {result['pass_se']:.4f} (pass spread / sqrt(P))"))
    if is_vdm:
      kind = "continuous" if num_steps == 0 else "discrete"
      exact = ", diffusion summed over all steps" if _EXACT.value else ""
      rows_at_3.insert(0, ("T", f"{num_steps} ({kind}){exact}"))
    table[3:3] = rows_at_3
    table += [(f"{t} bits/dim", f"{result[f'{t}_bpd']:.4f}") for t in result["terms"]]
    if is_vdm:
      base = os.path.splitext(output)[0]
      png = _write_decomposition(
        rows, base + "_by_t.csv", base + "_by_t.png", config.data.name, num_steps
      )
      table.append(("diffusion by t", f"{base}_by_t.csv, {png}"))
  table.append(("JSON", output))
  print(_table(table))
  print(f"  reproduce: {result['command']}")


def _write_decomposition(rows, csv_path, png_path, name, num_steps) -> str:
  """Writes the CSV, and the PNG if matplotlib is installed; returns what became of the PNG."""
  import csv

  from vdm_jax import _deps

  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
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
  fig.savefig(png_path, dpi=120)
  plt.close(fig)
  return png_path


def run():
  app.run(main)


if __name__ == "__main__":
  run()
