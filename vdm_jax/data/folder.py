"""Your own images: a folder of PNG/JPEG files -> a tfds array_record dataset, by name.

  vdm-import-images --images=~/pictures/cats --name=cats --resolution=32 \
      --data_dir=~/tensorflow_datasets
  vdm-train --config=configs/photos.py --config.data.name=cats --workdir=runs/cats

`import_images` writes `data_dir/<name>/1.0.0/` (array_record, readable without
TensorFlow); afterwards `data.name=<name>` with the same `data.data_dir` selects it: the
registry (`vdm_jax.data.lookup`) finds imported datasets under data_dir by name. Nothing
is registered in code, so the dataset is usable from any process.

* Files: every *.png, *.jpg, *.jpeg (any case) under the folder, recursively; hidden files
  and folders are skipped, other files are ignored (and counted). JPEG EXIF orientation is
  applied.
* Examples (`mode`): "crop" (default) takes each image's centred square of side
  min(height, width) and resizes it to resolution x resolution with PIL's box filter
  (output pixel i is the mean of the input pixels whose centres lie in (i s, (i + 1) s],
  s = side / resolution); images are never enlarged. "patches" cuts each image into
  non-overlapping resolution x resolution patches on a grid from its top-left corner (the
  right and bottom remainders are dropped), pixels unchanged.
* Channels: greyscale files give C = 1, colour files C = 3; a folder with both is an error
  unless `channels` is 1 (colour converted with PIL's ITU-R 601-2 luma, after resizing) or
  3 (grey replicated). Alpha is dropped if fully opaque, else the file is rejected;
  palette images count as colour; 16-bit and float images are rejected (V = 256).
* Split, by file and deterministic: files are grouped by the SHA-256 of their bytes and
  the groups ordered by it; the first groups, until they hold max(1, round(test_fraction
  * files)) files, are "test", the rest "train". Identical files therefore never straddle
  the split, and renaming or moving files does not change it.
* Records in each split, ordered by file path then patch (row-major): {"image": uint8
  [resolution, resolution, C], "file": path relative to the folder, "position": int32
  (row, column) of the example's top-left pixel in the (EXIF-rotated) file}. The
  dataset's `metadata.json` records the options and every file's split and SHA-256.
* Labels (optional, `labels=True`): the class of a file is its top-level sub-folder
  (`cats/a.png` and `cats/old/b.png` are both "cats"); the C class names, sorted, give the
  labels 0..C-1, stored as "label" in every record and listed as "classes" in
  `metadata.json`; the dataset then has `num_classes` = C and its batches carry "label"
  (for a class-conditional model, `config.model.conditional=True`). Files directly in
  the folder, or fewer than two classes, are errors. Without labels the sub-folders only
  hold files.

Bad input fails before anything is written, with one error that lists every problem at
once: bad options, a name that vdm_jax or the tensorflow-datasets catalog already uses (the
import would shadow that dataset under data_dir), an existing dataset, an unwritable
data_dir, a missing or empty folder or one without PNG/JPEG files, unreadable or truncated
files, images too small for the resolution, transparent or 16-bit images, grey and colour
mixed, fewer than two distinct images (no train and test split).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib
import json
import numbers
import os
import pkgutil
import re
import shutil

import numpy as np
import tensorflow_datasets as tfds

from vdm_jax.data import _offline
from vdm_jax.data.registry import DATASETS, Dataset, check_split

__all__ = [
  "EXTENSIONS",
  "ImageFolderError",
  "MODES",
  "SPLITS",
  "VERSION",
  "class_names",
  "find",
  "import_images",
  "imported_names",
  "list_images",
  "split_files",
  "tfds_catalog_names",
  "valid_name",
]

EXTENSIONS = (".png", ".jpg", ".jpeg")
"""The image files read (by extension, any case)."""
MODES = ("crop", "patches")
"""How images become examples: one centred crop per file, or every patch."""
SPLITS = ("train", "test")
"""The splits written."""
VERSION = "1.0.0"
"""The tfds version of the datasets written."""
_MARKER = "vdm_jax_image_folder"  # key in metadata.json of datasets written here
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_MAX_LISTED = 20  # bad files named in one error
# tensorflow_datasets subpackages that hold no dataset builders.
_TFDS_NOT_BUILDERS = frozenset({"core", "dataset_collections", "proto", "scripts", "testing"})


class ImageFolderError(ValueError):
  """A folder of images that cannot become a dataset; the message lists every problem."""


def _listed(lines: list[str], indent: str) -> str:
  shown = lines[:_MAX_LISTED]
  if len(lines) > len(shown):
    shown.append(f"... and {len(lines) - len(shown)} more")
  return "".join(f"\n{indent}{line}" for line in shown)


def valid_name(name) -> bool:
  """Whether `name` can name an imported dataset: [a-z][a-z0-9_]* (a tfds dataset name)."""
  return isinstance(name, str) and bool(_NAME.match(name))


@functools.cache
def tfds_catalog_names() -> frozenset[str]:
  """The dataset names of the tensorflow-datasets catalog installed here, without TensorFlow.

  tfds keeps dataset `n` in `<data_dir>/n/`, so an import named `n` would shadow it. The
  names are `tfds.list_builders()` (community datasets aside: listing them needs the
  network), after importing each builder subpackage of tfds on its own (tfds stops at the
  first that lacks an optional dependency, e.g. h5py), and the folders that hold a builder
  module named after them (`<n>/<n>.py` or `<n>/<n>_dataset_builder.py`), whose imports may
  fail. About 0.2 s.
  """
  root = os.path.dirname(tfds.__file__)
  names = set()
  for module in pkgutil.iter_modules([root]):
    if not module.ispkg or module.name in _TFDS_NOT_BUILDERS:
      continue
    try:
      importlib.import_module(f"tensorflow_datasets.{module.name}")
    except Exception:  # a builder this installation cannot import still has its folder name
      pass
    for folder_, dirs, files in os.walk(os.path.join(root, module.name)):
      dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
      base = os.path.basename(folder_)
      if f"{base}.py" in files or f"{base}_dataset_builder.py" in files:
        names.add(base)
  names.update(tfds.list_builders(with_community_datasets=False))
  return frozenset(names)


def _name_problem(name) -> str | None:
  """Why `name` cannot name an imported dataset, with another name to use; or None."""
  if not valid_name(name):
    suggestion = (
      re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") if isinstance(name, str) else ""
    )
    suggestion = suggestion if valid_name(suggestion) else "my_images"
    return (
      f"The dataset name {name!r} must be lower case letters, digits and underscores, "
      f"starting with a letter (it becomes a directory name and data.name), e.g. "
      f"--name={suggestion}."
    )
  if name in DATASETS:
    clash = f"vdm_jax's registered dataset {name!r} (data.name={name} selects it)"
  elif name in tfds_catalog_names():
    clash = (
      f"the tensorflow-datasets catalog's dataset {name!r} (tfds keeps it in "
      f"<data_dir>/{name}/, so the import would shadow it for tfds users)"
    )
  else:
    return None
  taken = set(DATASETS) | tfds_catalog_names()
  suggestion = next(
    n
    for n in (f"my_{name}", f"{name}_images", *(f"my_{name}_{i}" for i in range(2, 100)))
    if n not in taken
  )
  return f"The dataset name {name!r} is taken by {clash}; choose another, e.g. --name={suggestion}."


def _scan(images_dir: str) -> tuple[list[str], collections.Counter, int]:
  """(sorted image paths, other files by lower-case extension, hidden files) of the folder."""
  paths, others, hidden = [], collections.Counter(), 0
  for root, dirs, files in os.walk(images_dir):
    hidden += sum(d.startswith(".") for d in dirs)
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for file in files:
      extension = os.path.splitext(file)[1].lower()
      if file.startswith("."):
        hidden += 1
      elif extension in EXTENSIONS:
        rel = os.path.relpath(os.path.join(root, file), images_dir)
        paths.append(rel.replace(os.sep, "/"))
      else:
        others[extension] += 1
  return sorted(paths), others, hidden


def _folder_problem(images_dir: str, others: collections.Counter, hidden: int) -> str:
  """The problem of a folder with no PNG/JPEG file: what it holds instead."""
  skipped = f", and {hidden} hidden file(s) or folder(s), which are skipped" if hidden else ""
  if not others:
    found = f"{images_dir!r} is empty (no files{skipped})"
  else:
    kinds = ", ".join(f"{n} {ext or 'without extension'}" for ext, n in others.most_common())
    found = f"{images_dir!r} holds {sum(others.values())} file(s), none PNG/JPEG ({kinds}{skipped})"
  return (
    f"{found}. The images must be PNG or JPEG files ({', '.join(EXTENSIONS)}, any case), "
    "in the folder or its sub-folders: convert them, or point --images at their folder."
  )


def list_images(images_dir: str) -> tuple[list[str], int]:
  """Image files under `images_dir`, recursively, as sorted '/'-separated relative paths.

  Returns:
    (paths, number of other files ignored).

  Raises:
    ImageFolderError if the folder is missing or holds no PNG/JPEG file (saying what it
    holds instead).
  """
  images_dir = os.path.expanduser(os.fspath(images_dir))
  if not os.path.isdir(images_dir):
    raise ImageFolderError(f"The image folder {images_dir!r} does not exist or is not a folder.")
  paths, others, hidden = _scan(images_dir)
  if not paths:
    raise ImageFolderError(_folder_problem(images_dir, others, hidden))
  return paths, sum(others.values())


def split_files(digests: dict[str, str], test_fraction: float) -> dict[str, list[str]]:
  """The deterministic split by file: see the module docstring.

  Args:
    digests: relative path -> SHA-256 of the file's bytes.
    test_fraction: in (0, 1).

  Returns:
    {"train": sorted paths, "test": sorted paths}, both non-empty.
  """
  if not 0.0 < test_fraction < 1.0:
    raise ImageFolderError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
  groups = collections.defaultdict(list)
  for path, digest in digests.items():
    groups[digest].append(path)
  if len(groups) < 2:
    raise ImageFolderError(
      f"A train and a test split need at least 2 different images; found {len(digests)} "
      f"file(s) with {len(groups)} distinct content(s): {sorted(digests)[:_MAX_LISTED]}."
    )
  num_test = max(1, round(test_fraction * len(digests)))
  test = []
  for digest in sorted(groups):
    if len(test) >= num_test:
      break
    test.extend(groups[digest])
  if len(test) == len(digests):  # one group took everything: leave the last group to train
    test = [p for d in sorted(groups)[:-1] for p in groups[d]]
  test_set = set(test)
  return {
    "train": sorted(p for p in digests if p not in test_set),
    "test": sorted(test_set),
  }


@dataclasses.dataclass
class _Image:
  path: str
  pixels: list[np.ndarray]  # the examples, uint8 [R, R] (grey) or [R, R, 3] (colour)
  positions: list[tuple[int, int]]
  grey: bool


def _decode(full_path: str, rel: str):
  """Returns (PIL image in mode L or RGB, None) or (None, problem)."""
  import PIL.Image
  import PIL.ImageOps

  try:
    with PIL.Image.open(full_path) as opened:
      opened.load()
      image = PIL.ImageOps.exif_transpose(opened)
  except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    return None, f"{rel}: cannot be read as an image ({type(e).__name__}: {e})"
  mode = image.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    return None, (
      f"{rel}: has {mode} pixels (16-bit or float); only 8-bit images are supported "
      "(V = 256): convert it to 8 bits first"
    )
  if mode in ("P", "PA"):
    image, mode = image.convert("RGBA"), "RGBA"
  if mode in ("LA", "La", "RGBA", "RGBa"):
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() < 255:
      return None, (
        f"{rel}: has transparent pixels (alpha down to {alpha.min()}); flatten it onto a "
        "background first"
      )
    mode = "L" if mode in ("LA", "La") else "RGB"
    image = image.convert(mode)
  elif mode == "1":
    image, mode = image.convert("L"), "L"
  elif mode not in ("L", "RGB"):
    image, mode = image.convert("RGB"), "RGB"  # CMYK, YCbCr, LAB, HSV JPEGs
  return image, None


def _examples(image, rel: str, resolution: int, mode: str):
  """Returns (_Image, None) or (None, problem)."""
  import PIL.Image

  width, height = image.size
  if mode == "crop":
    side = min(width, height)
    if side < resolution:
      return None, (
        f"{rel}: is {width}x{height}, too small for {resolution}x{resolution} examples "
        "(images are never enlarged)"
      )
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side != resolution:
      square = square.resize((resolution, resolution), resample=PIL.Image.Resampling.BOX)
    pixels, positions = [np.asarray(square, np.uint8)], [(top, left)]
  else:
    if width < resolution or height < resolution:
      return None, (
        f"{rel}: is {width}x{height}, too small for one {resolution}x{resolution} patch"
      )
    array = np.asarray(image, np.uint8)
    pixels, positions = [], []
    for y in range(0, height - resolution + 1, resolution):
      for x in range(0, width - resolution + 1, resolution):
        pixels.append(array[y : y + resolution, x : x + resolution])
        positions.append((y, x))
  return _Image(rel, pixels, positions, grey=image.mode == "L"), None


def _version_dir(data_dir: str, name: str) -> str:
  return os.path.join(data_dir, name, VERSION)


def _metadata(version_dir: str) -> dict | None:
  try:
    with open(os.path.join(version_dir, "metadata.json")) as f:
      metadata = json.load(f)
  except (OSError, ValueError):
    return None
  if not os.path.exists(os.path.join(version_dir, "dataset_info.json")):
    return None
  return metadata if isinstance(metadata, dict) and metadata.get(_MARKER) else None


def imported_names(data_dir: str) -> list[str]:
  """Names of the datasets that `import_images` wrote under `data_dir`, sorted."""
  data_dir = os.path.expanduser(os.fspath(data_dir))
  if not os.path.isdir(data_dir):
    return []
  return sorted(
    name
    for name in os.listdir(data_dir)
    if _NAME.match(name) and _metadata(_version_dir(data_dir, name)) is not None
  )


def find(data_dir: str, name: str):
  """The registry entry (`data.Dataset`) of the imported dataset `name`, or None."""
  data_dir = os.path.expanduser(os.fspath(data_dir))
  if not isinstance(name, str) or not _NAME.match(name):
    return None
  version_dir = _version_dir(data_dir, name)
  metadata = _metadata(version_dir)
  if metadata is None:
    return None

  def source(data_dir_, split):
    del data_dir_  # the entry was found in data_dir
    check_split(name, SPLITS, split)
    return tfds.builder_from_directory(version_dir).as_data_source(split=split)

  return Dataset(
    name,
    SPLITS,
    source,
    lambda data_dir_: None,  # imported datasets are prepared by construction
    tuple(metadata["shape"]),
    256,
    dict(metadata["num_examples"]),
    num_classes=len(metadata.get("classes", [])),  # imports before labels have none
  )


def _option_problems(name, resolution, mode, test_fraction, channels) -> list[str]:
  """Problems of the options (the name among them), in the order the error lists them."""
  problems = [p for p in [_name_problem(name)] if p is not None]
  if not _good_resolution(resolution):
    problems.append(f"resolution must be a positive int, got {resolution!r}.")
  if mode not in MODES:
    problems.append(f"mode={mode!r} is not one of {MODES}.")
  if channels not in (0, 1, 3):
    problems.append(f"channels must be 0 (from the files), 1 or 3, got {channels!r}.")
  if not (isinstance(test_fraction, numbers.Real) and 0.0 < test_fraction < 1.0):
    problems.append(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
  return problems


def _good_resolution(resolution) -> bool:
  return not isinstance(resolution, bool) and isinstance(resolution, int) and resolution >= 1


def _target_problems(data_dir: str, name: str, target: str | None, overwrite: bool) -> list[str]:
  """Problems of where the dataset would go: an existing dataset, an unwritable data_dir."""
  problems = []
  if target is not None and os.path.exists(target):
    if _metadata(_version_dir(data_dir, name)) is None:
      problems.append(
        f"{target!r} exists and was not written by vdm-import-images; choose another name "
        "or data_dir (it is never deleted)."
      )
    elif not overwrite:
      problems.append(
        f"Dataset {name!r} already exists in {data_dir!r}; pass overwrite=True "
        "(--overwrite) to replace it."
      )
  unwritable = _offline.not_writable(target or data_dir)
  if unwritable is not None:
    problems.append(
      f"The data_dir {data_dir!r} cannot take the dataset: {unwritable}; pass "
      "--data_dir=<writable dir> (and train with the same --config.data.data_dir)."
    )
  return problems


@dataclasses.dataclass
class _Folder:
  """What one read of the folder found: every file's examples and digest, and its problems."""

  paths: list[str] = dataclasses.field(default_factory=list)
  ignored: int = 0
  images: dict = dataclasses.field(default_factory=dict)  # path -> _Image
  digests: dict = dataclasses.field(default_factory=dict)  # path -> SHA-256
  grey: list[str] = dataclasses.field(default_factory=list)
  colour: list[str] = dataclasses.field(default_factory=list)
  problems: list[str] = dataclasses.field(default_factory=list)


def _read_folder(images_dir: str, resolution, mode: str) -> _Folder:
  """Reads every image file once (examples only when the options are good)."""
  found = _Folder()
  if not os.path.isdir(images_dir):
    found.problems.append(f"The image folder {images_dir!r} does not exist or is not a folder.")
    return found
  found.paths, others, hidden = _scan(images_dir)
  found.ignored = sum(others.values())
  if not found.paths:
    found.problems.append(_folder_problem(images_dir, others, hidden))
  file_problems = []
  for rel in found.paths:
    full = os.path.join(images_dir, *rel.split("/"))
    with open(full, "rb") as f:
      found.digests[rel] = hashlib.sha256(f.read()).hexdigest()
    image, problem = _decode(full, rel)
    if problem is None:
      (found.grey if image.mode == "L" else found.colour).append(rel)
      if _good_resolution(resolution) and mode in MODES:
        found.images[rel], problem = _examples(image, rel, resolution, mode)
    if problem is not None:
      file_problems.append(problem)
  if file_problems:
    found.problems.append(
      f"{len(file_problems)} of the {len(found.paths)} images cannot be used:"
      + _listed(file_problems, "      ")
    )
  return found


def _content_problems(found: _Folder, channels: int) -> list[str]:
  """Grey and colour mixed without `channels`; fewer than two distinct images."""
  problems = []
  if found.grey and found.colour and channels == 0:
    problems.append(
      f"The folder mixes {len(found.grey)} greyscale and {len(found.colour)} colour images "
      f"(e.g. grey {found.grey[:3]}, colour {found.colour[:3]}); pass channels=3 "
      "(--channels=3) to replicate grey into RGB or channels=1 (--channels=1) to convert "
      "colour to grey."
    )
  distinct = len(set(found.digests.values()))
  if found.paths and distinct < 2:
    problems.append(
      f"A train and a test split need at least 2 different images; the folder has "
      f"{len(found.paths)} image file(s) with {distinct} distinct content(s)."
    )
  return problems


def class_names(paths: list[str]) -> tuple[list[str], list[str]]:
  """The classes of labelled files: each file's top-level sub-folder names its class.

  Args:
    paths: '/'-separated paths relative to the image folder (`list_images`).

  Returns:
    (sorted class names, label 0..C-1 being their position; problems: files directly in
    the folder, which have no class, and fewer than two classes).

  Example:
    >>> class_names(["cat/a.png", "dog/b.png", "cat/x/c.png"])
    (['cat', 'dog'], [])
  """
  top = [p for p in paths if "/" not in p]
  names = sorted({p.split("/", 1)[0] for p in paths if "/" in p})
  problems = []
  if top:
    problems.append(
      f"With labels, every image must be in a sub-folder named after its class; "
      f"{len(top)} file(s) lie directly in the folder:" + _listed(top, "      ")
    )
  if paths and len(names) < 2:
    problems.append(
      f"Labels need at least 2 classes (sub-folders with images); found {len(names)}"
      f"{': ' + names[0] if names else ''}. Import without labels (--nolabels) instead."
    )
  return names, problems


def _records(split, found: _Folder, num_channels: int, classes: list[str] | None) -> dict:
  """The examples of each split in the stored order, converted to `num_channels`."""

  def converted(pixels: np.ndarray) -> np.ndarray:
    import PIL.Image

    if pixels.ndim == 2:
      return np.repeat(pixels[..., None], num_channels, axis=-1)
    if num_channels == 1:
      return np.asarray(PIL.Image.fromarray(pixels).convert("L"), np.uint8)[..., None]
    return pixels

  label_of = {name: i for i, name in enumerate(classes or [])}

  def record(path, pixels, position):
    out = {"image": converted(pixels), "file": path, "position": np.asarray(position, np.int32)}
    if classes:
      out["label"] = np.int32(label_of[path.split("/", 1)[0]])
    return out

  return {
    s: [
      record(p, pixels, pos)
      for p in files
      for pixels, pos in zip(found.images[p].pixels, found.images[p].positions, strict=True)
    ]
    for s, files in split.items()
  }


def import_images(
  images_dir: str,
  *,
  name: str,
  data_dir: str,
  resolution: int = 32,
  mode: str = "crop",
  test_fraction: float = 0.1,
  channels: int = 0,
  overwrite: bool = False,
  labels: bool = False,
) -> dict:
  """Turns a folder of PNG/JPEG images into the tfds dataset `data_dir/<name>/1.0.0/`.

  Args:
    images_dir: the folder (searched recursively).
    name: the dataset's name, [a-z][a-z0-9_]*, neither a registered dataset's nor one of
      the tensorflow-datasets catalog (`tfds_catalog_names`); train
      with `data.name=<name>` and the same `data.data_dir`.
    data_dir: tfds data directory to write into.
    resolution: side of the square examples, in pixels.
    mode: "crop" (centre square resized, one example per file) or "patches" (every
      non-overlapping resolution x resolution patch).
    test_fraction: share of the files in the test split, in (0, 1).
    channels: 0 = from the files (an error if grey and colour are mixed), 1 or 3 to convert.
    overwrite: replace a dataset of the same name that this function wrote before.
    labels: each file's class is its top-level sub-folder (`class_names`: sorted names,
      label = position); every record gets "label", and the pipeline's batches carry it.
      False: no labels, sub-folders only hold files.

  Returns:
    a summary: name, path, shape, num_examples and num_files per split, ignored files, and
    "classes" (the class names, [] without labels).

  Raises:
    ImageFolderError (a ValueError) listing every problem at once (options, name, data_dir,
    folder, each bad file, files outside a class folder); nothing is written.
  """
  problems = _option_problems(name, resolution, mode, test_fraction, channels)
  images_dir = os.path.abspath(os.path.expanduser(os.fspath(images_dir)))
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  target = os.path.join(data_dir, name) if _name_problem(name) is None else None
  problems += _target_problems(data_dir, name, target, overwrite)
  # Read every file once, collecting every problem before writing anything.
  found = _read_folder(images_dir, resolution, mode)
  problems += found.problems + _content_problems(found, channels)
  classes, class_problems = class_names(found.paths) if labels else ([], [])
  problems += class_problems
  if problems:
    raise ImageFolderError(
      f"Cannot import {images_dir!r} as dataset {name!r}; nothing was written. "
      f"{len(problems)} problem{'s' if len(problems) > 1 else ''} to fix:"
      + "".join(f"\n  - {problem}" for problem in problems)
    )
  num_channels = channels or (1 if found.grey else 3)
  split = split_files(found.digests, test_fraction)
  records = _records(split, found, num_channels, classes)
  shape = (resolution, resolution, num_channels)
  metadata = {
    _MARKER: 1,
    "images_dir": images_dir,
    "resolution": resolution,
    "mode": mode,
    "channels": num_channels,
    "test_fraction": test_fraction,
    "shape": list(shape),
    "num_examples": {s: len(r) for s, r in records.items()},
    "files": {s: {p: found.digests[p] for p in files} for s, files in split.items()},
    "classes": classes,
  }
  # Write (replacing a previous import of the same name only now that all is well).
  if os.path.exists(target):
    shutil.rmtree(target)
  _write(data_dir, name, shape, records, metadata)
  return {
    "name": name,
    "path": _version_dir(data_dir, name),
    "shape": shape,
    "num_examples": metadata["num_examples"],
    "num_files": {s: len(files) for s, files in split.items()},
    "ignored_files": found.ignored,
    "classes": classes,
  }


def _write(data_dir: str, name: str, shape, records, metadata) -> None:
  description = (
    f"Images of {metadata['images_dir']} imported by vdm-import-images: mode "
    f"{metadata['mode']!r}, {shape[0]}x{shape[1]}x{shape[2]} uint8; split by file content "
    f"hash, test fraction {metadata['test_fraction']}."
  )

  dataset_name = name
  classes = metadata["classes"]
  label_feature = {"label": tfds.features.ClassLabel(names=classes)} if classes else {}
  with tfds.core.registered.skip_registration():

    class ImageFolder(tfds.core.GeneratorBasedBuilder):
      name = dataset_name
      VERSION = tfds.core.Version(VERSION)

      def _info(self):
        return tfds.core.DatasetInfo(
          builder=self,
          description=description,
          features=tfds.features.FeaturesDict(
            {
              "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
              "file": tfds.features.Text(),
              "position": tfds.features.Tensor(shape=(2,), dtype=np.int32),
              **label_feature,
            }
          ),
          disable_shuffling=True,
          metadata=tfds.core.MetadataDict(metadata),
        )

      def _split_generators(self, dl_manager):
        del dl_manager
        return {s: self._generate_examples(r) for s, r in records.items()}

      def _generate_examples(self, split_records):
        yield from enumerate(split_records)

  ImageFolder(data_dir=data_dir, file_format="array_record").download_and_prepare(
    file_format="array_record"
  )
