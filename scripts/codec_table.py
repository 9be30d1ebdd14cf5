"""A model's test bits/dim beside lossless codecs and simple models on the same images.

  vdm-codec-table --name=photos \
      --eval_json=runs/photos/eval_test_step500_T0.json

Loads the dataset's train and test splits (building the offline ones if needed), and
prints a Markdown table: the model rows from `scripts/evaluate.py` JSON files
(--eval_json, any number), uniform log2 V, independent categoricals fitted on train,
and PNG and lossless WebP (Pillow) on every test image alone and on the test set as one
mosaic (`vdm_jax.evaluation.codecs`). Lower is better; all rows are bits per dimension of the same
test images.
"""

import json
import time

from absl import flags

from vdm_jax import _cli

_NAME = flags.DEFINE_string("name", "photos", "Dataset (data.name): registered or imported.")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "tfds data directory.")
_SPLIT = flags.DEFINE_string("split", "test", "Split the table is about.")
_EVAL_JSON = flags.DEFINE_multi_string("eval_json", [], "scripts/evaluate.py JSON outputs.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "Add-alpha smoothing of the categoricals.")
_OUTPUT = flags.DEFINE_string("output", None, "Also write the rows as JSON here.")

_cli.check_flag_range("alpha", minimum=0, exclusive=True)
_cli.check_output_flag("output")


def _split(data, config, split):
  import numpy as np

  batches = data.eval_batches(config, split, global_batch_size=256)
  return np.concatenate([b["image"][b["mask"] > 0] for b in batches])


def _fmt(value) -> str:
  """Three decimals; "n/a" for None (null in the JSON: a number that is not defined)."""
  return "n/a" if value is None else f"{value:.3f}"


def _model_row(path, name, num_examples):
  from vdm_jax.runtime import workdir

  with open(path) as f:  # one written before strict JSON may hold NaN: None, as now
    result = workdir.to_strict_json(json.load(f))
  if result.get("data") != name or result.get("num_examples") != num_examples:
    raise ValueError(
      f"{path} evaluates {result.get('data')!r} with {result.get('num_examples')} examples, "
      f"not {name!r} with {num_examples}."
    )
  passes = ", ".join(_fmt(b) for b in result.get("pass_bpd", []))
  return {
    "method": f"VDM ({result.get('model', 'vdm')}, step {result['checkpoint_step']})",
    "bpd": result["bpd"],
    "se": result["bpd_se"],
    "note": f"{result.get('passes', 1)} pass(es): {passes}" if passes else result["method"],
  }


def main(argv):
  _cli.start(argv)
  import ml_collections

  from vdm_jax import data
  from vdm_jax.evaluation import codecs
  from vdm_jax.runtime import workdir

  config = ml_collections.ConfigDict(
    {"name": _NAME.value, "data_dir": _DATA_DIR.value, "num_workers": 0}
  )
  data.prepare(config)
  info = data.dataset_info(config)
  train, test = _split(data, config, "train"), _split(data, config, _SPLIT.value)
  rows = [_model_row(p, info.name, len(test)) for p in _EVAL_JSON.value]
  start = time.perf_counter()
  rows += codecs.table(train, test, info.vocab_size, alpha=_ALPHA.value)
  seconds = time.perf_counter() - start
  shape = "x".join(map(str, info.shape))
  print(
    f"{info.name} / {_SPLIT.value}: {len(test)} images of {shape}, V = {info.vocab_size} "
    f"(categoricals fitted on {len(train)} train images; baselines and codecs in {seconds:.0f} s)\n"
  )
  print("| method | bits/dim | standard error | note |")
  print("|---|---|---|---|")
  for r in rows:
    se = "" if r["se"] is None else f"{r['se']:.3f}"
    print(f"| {r['method']} | {_fmt(r['bpd'])} | {se} | {r['note']} |")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      f.write(workdir.dumps_strict(rows, indent=2))


def run():
  _cli.run(main)


if __name__ == "__main__":
  run()
