"""`evaluation.codecs`' table of a dataset in-process: model rows, baselines, Markdown."""

import json

import ml_collections
import numpy as np
import pytest

from vdm_jax.evaluation import codecs


def _eval_json(path, **changes):
  result = {
    "data": "digits",
    "num_examples": 3,
    "model": "vdm",
    "checkpoint_step": 9,
    "method": "elbo",
    "bpd": 1.25,
    "bpd_se": 0.125,
    "passes": 2,
    "pass_bpd": [1.0, float("nan")],  # as written before strict JSON
  } | changes
  path.write_text(json.dumps(result))
  return str(path)


def test_model_row_reads_an_evaluation_and_refuses_another_dataset(tmp_path):
  row = codecs.model_row(_eval_json(tmp_path / "e.json"), "digits", 3)
  assert row == {
    "method": "VDM (vdm, step 9)",
    "bpd": 1.25,
    "se": 0.125,
    "note": "2 pass(es): 1.000, n/a",
  }
  with pytest.raises(ValueError, match="evaluates 'digits' with 3 examples, not 'photos'"):
    codecs.model_row(_eval_json(tmp_path / "e.json"), "photos", 3)
  with pytest.raises(ValueError, match="not 'digits' with 4"):
    codecs.model_row(_eval_json(tmp_path / "e.json"), "digits", 4)


def test_render_table_is_markdown_with_one_row_per_method():
  rows = [
    {"method": "VDM", "bpd": 1.25, "se": 0.125, "note": "a"},
    {"method": "uniform", "bpd": 4.0, "se": None, "note": "log2 16"},
    {"method": "broken", "bpd": None, "se": None, "note": ""},
  ]
  result = {
    "rows": rows,
    "name": "digits",
    "split": "test",
    "shape": [8, 8, 1],
    "vocab_size": 16,
    "num_train": 5,
    "num_test": 3,
    "seconds": 2.0,
  }
  lines = codecs.render_table(result).splitlines()
  assert lines[0].startswith("digits / test: 3 images of 8x8x1, V = 16 (categoricals fitted on 5")
  assert lines[2:] == [
    "| method | bits/dim | standard error | note |",
    "|---|---|---|---|",
    "| VDM | 1.250 | 0.125 | a |",
    "| uniform | 4.000 |  | log2 16 |",
    "| broken | n/a |  |  |",
  ]


@pytest.mark.slow  # about 15 s on 2 CPU cores: builds the digits dataset, then every codec
def test_dataset_table_of_digits(tmp_path):
  config = ml_collections.ConfigDict(
    {"name": "digits", "data_dir": str(tmp_path / "tfds"), "num_workers": 0}
  )
  first = codecs.dataset_table(config)
  n = first["num_test"]
  path = _eval_json(tmp_path / "e.json", num_examples=n)
  result = codecs.dataset_table(config, eval_json=[path], alpha=0.5)
  assert result["rows"][0] == codecs.model_row(path, "digits", n)
  assert result["rows"][1] == {
    "method": "uniform",
    "bpd": np.log2(result["vocab_size"]),
    "se": None,
    "note": f"log2 {result['vocab_size']}",
  }
  assert [r["method"] for r in result["rows"][1:]] == [r["method"] for r in first["rows"]]
  assert all(np.isfinite(r["bpd"]) and r["bpd"] > 0 for r in result["rows"])
  fitted = [r for r in result["rows"] if r["method"].startswith("independent categorical")]
  assert len(fitted) == 2 and all(r["bpd"] < np.log2(result["vocab_size"]) for r in fitted)
