"""Turn a folder of your PNG/JPEG images into a dataset to train on (also `vdm-import-images`).

  vdm-import-images --images=~/pictures/cats --name=cats --resolution=32
  vdm-train --config=photos --workdir=runs/cats --config.data.name=cats

Writes the tfds array_record dataset `<data_dir>/<name>/1.0.0/` (same --data_dir as the
config's data.data_dir, default ~/tensorflow_datasets). Each image gives its centred
square resized to --resolution (--mode=crop) or its non-overlapping patches
(--mode=patches); the split is by file, deterministic (`vdm_jax.data.folder`). Bad files
are all named in one error, before anything is written. With --labels each file's class
is its top-level sub-folder: records and training batches carry "label".
"""

import time

from absl import flags

from vdm_jax import _cli

_IMAGES = flags.DEFINE_string("images", None, "Folder of PNG/JPEG images (searched recursively).")
_NAME = flags.DEFINE_string("name", None, "Dataset name: then train with --config.data.name=NAME.")
_DATA_DIR = flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "tfds data directory.")
_RESOLUTION = flags.DEFINE_integer("resolution", 32, "Side of the square examples, in pixels.")
_MODE = flags.DEFINE_enum(
  "mode", "crop", ["crop", "patches"], "Centre crop + resize, or non-overlapping patches."
)
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.1, "Share of the files in the test split.")
_CHANNELS = flags.DEFINE_enum(
  "channels", "auto", ["auto", "1", "3"], "auto: from the files (grey and colour mixed fail)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier import of this name.")
_LABELS = flags.DEFINE_bool(
  "labels", False, "Class = top-level sub-folder name; records and batches carry 'label'."
)
flags.mark_flags_as_required(["images", "name"])

_cli.check_flag_range("resolution", minimum=1)


def main(argv):
  _cli.start(argv)
  import tensorflow_datasets as tfds

  from vdm_jax.data import folder

  tfds.disable_progress_bar()
  start = time.perf_counter()
  summary = folder.import_images(
    _IMAGES.value,
    name=_NAME.value,
    data_dir=_DATA_DIR.value,
    resolution=_RESOLUTION.value,
    mode=_MODE.value,
    test_fraction=_TEST_FRACTION.value,
    channels=0 if _CHANNELS.value == "auto" else int(_CHANNELS.value),
    overwrite=_OVERWRITE.value,
    labels=_LABELS.value,
  )
  n, f = summary["num_examples"], summary["num_files"]
  classes = summary["classes"]
  print(
    f"Imported {summary['name']!r} in {time.perf_counter() - start:.1f} s: "
    f"{'x'.join(map(str, summary['shape']))} uint8, V = 256\n"
    f"  train: {n['train']} examples from {f['train']} files\n"
    f"  test:  {n['test']} examples from {f['test']} files\n"
    f"  other files ignored: {summary['ignored_files']}\n"
    + (f"  {len(classes)} classes (labels 0, 1, ...): {', '.join(classes)}\n" if classes else "")
    + f"  written to {summary['path']}\n"
    f"Train on it:\n  vdm-train --config=photos --workdir=runs/{summary['name']} "
    f"--config.data.name={summary['name']} --config.data.data_dir={_DATA_DIR.value}"
    + (" --config.model.conditional=True" if classes else "")
  )


def run():
  _cli.run(main)


if __name__ == "__main__":
  run()
