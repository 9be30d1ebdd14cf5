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


def main(argv):
  _cli.start(argv)
  import ml_collections

  from vdm_jax.evaluation import codecs
  from vdm_jax.runtime import workdir

  config = ml_collections.ConfigDict(
    {"name": _NAME.value, "data_dir": _DATA_DIR.value, "num_workers": 0}
  )
  result = codecs.dataset_table(
    config, split=_SPLIT.value, eval_json=_EVAL_JSON.value, alpha=_ALPHA.value
  )
  print(codecs.render_table(result))
  if _OUTPUT.value:
    workdir.write_json_atomic(_OUTPUT.value, workdir.dumps_strict(result["rows"], indent=2))


def run():
  _cli.run(main)


if __name__ == "__main__":
  run()
