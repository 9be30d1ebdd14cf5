"""`evaluation.report` in-process: the evaluation of one checkpoint, its table and its files."""

import csv
import importlib
import json

import jax
import numpy as np
import pytest

from vdm_jax import _deps, data, models
from vdm_jax.evaluation import bpd, report, runs
from vdm_jax.runtime import mesh as mesh_lib


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """An initialised (untrained) toy2d VDM as a `runs.Run` in an empty work directory."""
  config = importlib.import_module("vdm_jax_configs.toy2d").get_config()
  config.eval.batch_size = 5000  # the whole test split in one batch
  model = models.make_model(config, data.static_info(config.data))
  workdir = tmp_path_factory.mktemp("run")
  (workdir / "checkpoints").mkdir()
  params = model.init(jax.random.key(0))
  return runs.Run(model, params, config, 7, mesh_lib.make_mesh(), str(workdir))


@pytest.mark.slow  # about 30 s on 2 CPU cores with a cold compilation cache
def test_evaluate_checkpoint_writes_what_it_returns_and_renders_the_table(toy_run, capsys):
  output = toy_run.workdir + "/eval.json"
  result = report.evaluate_checkpoint(toy_run, num_bins=4, output=output, command="cmd")
  assert result == json.loads(open(output).read())
  assert result["checkpoint_step"] == 7 and result["num_examples"] == 5000
  assert result["seed"] == bpd.evaluation_seed(toy_run.config, None)
  # The bits/dim is the sum of its terms, and no private key (`_...`) reaches the JSON.
  total = sum(result[f"{t}_bpd"] for t in result["terms"])
  np.testing.assert_allclose(result["bpd"], total, rtol=1e-6)
  assert not [k for k in result if k.startswith("_")]
  with open(toy_run.workdir + "/eval_by_t.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4  # one row per bin of gamma
  # The diffusion term is the sum over the bins (bits/dim).
  np.testing.assert_allclose(sum(float(r["bpd"]) for r in rows), result["diffusion_bpd"], rtol=1e-4)
  assert capsys.readouterr().out == ""  # it prints nothing: the tool prints the render
  base = toy_run.workdir + "/eval"
  assert result["files"] == {"diffusion by t": f"{base}_by_t.csv, {base}_by_t.png", "JSON": output}
  table = report.format_table(result, split="test", num_steps=0, exact=False, files=result["files"])
  assert report.render_evaluation(result) == f"{table}\n  reproduce: cmd"
  assert f"{result['bpd']:.4f} +- {result['bpd_se']:.4f}" in table


@pytest.mark.parametrize(
  "options, match",
  [
    ({"method": "exact"}, "Unknown method 'exact'"),
    ({"split": "validation"}, "validation"),
  ],
)
def test_evaluate_checkpoint_refusals_write_nothing(tmp_path, options, match):
  config = importlib.import_module("vdm_jax_configs.toy2d").get_config()
  run = runs.Run(None, None, config, 7, None, str(tmp_path))  # refused before any model use
  with pytest.raises(ValueError, match=match):
    report.evaluate_checkpoint(run, output=str(tmp_path / "e.json"), **options)
  assert list(tmp_path.iterdir()) == []


def test_format_table_of_a_model_without_diffusion_time():
  result = {
    "data": "digits",
    "num_examples": 3,
    "model": "vae",
    "checkpoint_step": 1,
    "method": "elbo",
    "bpd": 1.5,
    "bpd_se": 0.25,
    "passes": 1,
    "pass_bpd": [1.5],
    "pass_se": None,
    "terms": ["recon", "kl"],
    "recon_bpd": 1.0,
    "kl_bpd": 0.5,
  }
  lines = report.format_table(
    result, split="test", num_steps=0, exact=False, files={"JSON": "e.json"}
  ).splitlines()
  labels = [line.split("  ")[1].strip() for line in lines]
  assert labels == [
    "data / split",
    "model / checkpoint step",
    "method",
    "passes",
    "bits/dim",
    "recon bits/dim",
    "kl bits/dim",
    "JSON",
  ]  # no T, no gamma, no Monte Carlo row for one pass
  assert "1.5000 +- 0.2500" in lines[4] and lines[-1].endswith("e.json")


def test_write_decomposition_csv_and_png(tmp_path):
  rows = [
    {"gamma_lo": -5.0, "gamma_hi": 0.0, "bpd": 0.25},
    {"gamma_lo": 0.0, "gamma_hi": 5.0, "bpd": 0.5},
  ]
  png = report.write_decomposition(rows, tmp_path / "d.csv", tmp_path / "d.png", "toy", 0)
  with open(tmp_path / "d.csv") as f:
    assert [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)] == rows
  if _deps.available("matplotlib"):
    assert png == tmp_path / "d.png" and (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
  else:
    assert "pip install" in png and not (tmp_path / "d.png").exists()
