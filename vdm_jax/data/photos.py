"""Offline colour photo patches, CIFAR-shaped: 32x32x3, V = 256, as a tfds array_record dataset.

Six colour photographs ship inside installed wheels (no network, no TensorFlow):
scikit-learn's `china.jpg` and `flower.jpg` (427x640, `sklearn/datasets/images/`) and
scikit-image's `astronaut.png` (512x512), `chelsea.png` (300x451), `coffee.png` (400x600)
and `rocket.jpg` (427x640) (`skimage/data/`; these four are in scikit-image's wheel, not
fetched at run time). Licences, from the packages' own files: china and flower are CC BY 2.0
(sklearn/datasets/images/README.txt); astronaut and rocket are public domain, chelsea and
coffee CC0 (the docstrings of `skimage.data.astronaut`, `.rocket`, `.chelsea`, `.coffee`).
Files are read with PIL from the package directories (neither package is imported).

Split by region, so that no patch, train or test, straddles it. Each photo is tiled into
64x64 blocks from its top-left corner; a permutation of its blocks from
`np.random.default_rng(SPLIT_SEED + photo index)` puts the first round(0.4 * blocks) in the
test region; every other pixel (the other blocks and the ragged right and bottom margins)
is train region.

* "test": the 4 non-overlapping 32x32 patches of every test block (524 patches).
* "train": every 32x32 window at stride 16 that holds no test pixel (2,635 windows), each
  followed by its left-right mirror image (5,270 patches).

Records, in that order (photo, then row, then column; tfds shuffling disabled, key =
position): {"image": uint8 (32, 32, 3), "photo": index into `PHOTOS`, "position": int32
(row, column) of the patch's top-left pixel in the photo, "flipped": bool}. The decoded
pixels of every photo are checked against SHA-256 sums, so the dataset is the same bytes
on every machine (a different JPEG decoder fails the build with a message, not silently).
Building takes a few seconds.

  >>> photos.prepare("/tmp/tfds")                       # writes photo_patches/1.0.0/
  >>> photos.data_source("/tmp/tfds", "test")[0]["image"].shape
  (32, 32, 3)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from vdm_jax.data import _offline

__all__ = [
  "BLOCK",
  "NUM_EXAMPLES",
  "PATCH",
  "PHOTOS",
  "PhotoPatches",
  "SHAPE",
  "SPLIT_SEED",
  "STRIDE",
  "TEST_FRACTION",
  "VOCAB_SIZE",
  "data_source",
  "load_photos",
  "patches",
  "prepare",
  "split_masks",
]

VOCAB_SIZE = 256
"""Levels per colour channel."""
PATCH = 32
"""Side of a patch, in pixels."""
SHAPE = (PATCH, PATCH, 3)
"""The shape of one patch."""
BLOCK = 64
"""Side of the square blocks assigned to train or test."""
STRIDE = 16
"""Stride of the train windows."""
TEST_FRACTION = 0.4
"""Fraction of each photo's whole blocks in the test region."""
SPLIT_SEED = 0
"""Seed of the per-photo permutation of blocks."""
NUM_EXAMPLES = {"train": 5_270, "test": 524}
"""Patches per split."""


@dataclasses.dataclass(frozen=True)
class Photo:
  name: str
  package: str  # the distribution whose wheel ships the file
  path: tuple[str, ...]  # inside the package's import directory
  licence: str
  sha256: str  # of the decoded RGB pixels, uint8 [H, W, 3] in C order


PHOTOS = (
  Photo(
    "china",
    "scikit-learn",
    ("sklearn", "datasets", "images", "china.jpg"),
    "CC BY 2.0, danielbuechele on Flickr (sklearn/datasets/images/README.txt)",
    "e701459344fd69797154c91add3bb5d70e5ed1a61d8bed889bab3a796104698d",
  ),
  Photo(
    "flower",
    "scikit-learn",
    ("sklearn", "datasets", "images", "flower.jpg"),
    "CC BY 2.0, vultilion on Flickr (sklearn/datasets/images/README.txt)",
    "3202904ed246795bf616c66d7859cd7c6080eff736c6e38dc5cc62779742033f",
  ),
  Photo(
    "astronaut",
    "scikit-image",
    ("skimage", "data", "astronaut.png"),
    "public domain, NASA (skimage.data.astronaut)",
    "a8c429c18afa7b0fd5673e598d73a21225d94c864a71bbb3885126fdecb41071",
  ),
  Photo(
    "chelsea",
    "scikit-image",
    ("skimage", "data", "chelsea.png"),
    "CC0, Stefan van der Walt (skimage.data.chelsea)",
    "416b729128bfb2c3d1eb69bf9b1734a796293abc17939267b2dc94f8a5784031",
  ),
  Photo(
    "coffee",
    "scikit-image",
    ("skimage", "data", "coffee.png"),
    "CC0, Rachel Michetti (skimage.data.coffee)",
    "0ce2b51640b9c95f19617f03eabf40c3f0368589cc1ee1190b70966165ac184f",
  ),
  Photo(
    "rocket",
    "scikit-image",
    ("skimage", "data", "rocket.jpg"),
    "public domain, SpaceX (skimage.data.rocket)",
    "3d4435cc745752b7f9724df88c6e18817de3ce7e3d2d71c55f85f7831e68f197",
  ),
)
"""The six photos: name, the package that ships them, the file, licence and pixel hash."""


def _photo_path(photo: Photo) -> str:
  # find_spec of a top-level package locates it without importing it.
  spec = importlib.util.find_spec(photo.path[0])
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f"Photo {photo.name!r} ships with {photo.package}, which is not installed: "
      f"pip install {photo.package} (a dependency of vdm_jax; reinstall with pip install -e .)."
    )
  return os.path.join(spec.submodule_search_locations[0], *photo.path[1:])


def load_photos() -> list[np.ndarray]:
  """The photos of `PHOTOS` as uint8 [H, W, 3] arrays, checked against their SHA-256 sums."""
  import PIL.Image  # Deferred: only building needs it.

  images = []
  for photo in PHOTOS:
    path = _photo_path(photo)
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"Photo {photo.name!r} is missing from {photo.package} (expected {path})."
      )
    with PIL.Image.open(path) as f:
      image = np.ascontiguousarray(np.asarray(f.convert("RGB"), np.uint8))
    digest = hashlib.sha256(image.tobytes()).hexdigest()
    if digest != photo.sha256:
      raise ValueError(
        f"Photo {photo.name!r} ({path}) decodes to pixels with SHA-256 {digest}, expected "
        f"{photo.sha256}: this {photo.package} or Pillow (JPEG decoder) gives different "
        "pixels, so the dataset would not be the documented one. Install the versions "
        "pinned in pyproject.toml."
      )
    images.append(image)
  return images


def split_masks(shapes) -> list[np.ndarray]:
  """Boolean [H, W] test-region mask of each photo, from its [H, W] shape and index."""
  masks = []
  for index, (height, width) in enumerate(shapes):
    rows, cols = height // BLOCK, width // BLOCK
    order = np.random.default_rng(SPLIT_SEED + index).permutation(rows * cols)
    mask = np.zeros((height, width), bool)
    for block in order[: round(TEST_FRACTION * rows * cols)]:
      r, c = divmod(int(block), cols)
      mask[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = True
    masks.append(mask)
  return masks


def patches(images: list[np.ndarray] | None = None) -> dict[str, dict[str, np.ndarray]]:
  """Cuts the photos into the two splits, in the stored order (pure NumPy, deterministic).

  Args:
    images: the photos (default `load_photos()`).

  Returns:
    {split: {"image": uint8 [N, 32, 32, 3], "photo": int64 [N], "position": int32 [N, 2],
    "flipped": bool [N]}}.
  """
  images = load_photos() if images is None else images
  masks = split_masks([image.shape[:2] for image in images])
  out = {split: {"image": [], "photo": [], "position": [], "flipped": []} for split in NUM_EXAMPLES}

  def add(split, image, index, y, x, flipped):
    out[split]["image"].append(image)
    out[split]["photo"].append(index)
    out[split]["position"].append((y, x))
    out[split]["flipped"].append(flipped)

  for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
    height, width = mask.shape
    for y in range(0, height - PATCH + 1, STRIDE):
      for x in range(0, width - PATCH + 1, STRIDE):
        window = mask[y : y + PATCH, x : x + PATCH]
        patch = image[y : y + PATCH, x : x + PATCH]
        if window.all() and y % PATCH == 0 and x % PATCH == 0:
          add("test", patch, index, y, x, False)
        elif not window.any():
          add("train", patch, index, y, x, False)
          add("train", patch[:, ::-1], index, y, x, True)
  return {
    split: {
      "image": np.stack(d["image"]).astype(np.uint8),
      "photo": np.asarray(d["photo"], np.int64),
      "position": np.asarray(d["position"], np.int32).reshape(-1, 2),
      "flipped": np.asarray(d["flipped"], bool),
    }
    for split, d in out.items()
  }


class PhotoPatches(tfds.core.GeneratorBasedBuilder):
  """tfds builder of the photo patches (registered as "photo_patches")."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
    "1.0.0": "32x32x3 uint8 patches of six photos; 64-px blocks, 40% test; train stride 16 "
    "with mirror images."
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "32x32 RGB patches (256 levels) of six colour photographs shipped by scikit-learn "
        "(china, flower) and scikit-image (astronaut, chelsea, coffee, rocket). Split by "
        "64x64 blocks (40% of each photo's blocks test): test = non-overlapping patches of "
        "the test blocks; train = stride-16 windows outside them, each with its mirror image."
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=SHAPE, dtype=np.uint8),
          "photo": tfds.features.ClassLabel(names=[p.name for p in PHOTOS]),
          "position": tfds.features.Tensor(shape=(2,), dtype=np.int32),
          "flipped": tfds.features.Tensor(shape=(), dtype=np.bool_),
        }
      ),
      homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the photos ship with the packages.
    splits = patches()
    for split, expected in NUM_EXAMPLES.items():
      if len(splits[split]["image"]) != expected:
        raise AssertionError(f"{split}: {len(splits[split]['image'])} patches, not {expected}")
    return {split: self._generate_examples(d) for split, d in splits.items()}

  def _generate_examples(self, split):
    for i in range(len(split["image"])):
      yield (
        i,
        {
          "image": split["image"][i],
          "photo": int(split["photo"][i]),
          "position": split["position"][i],
          "flipped": bool(split["flipped"][i]),
        },
      )


def _builder(data_dir: str) -> PhotoPatches:
  return PhotoPatches(data_dir=os.fspath(data_dir), file_format="array_record")


def prepare(data_dir: str) -> None:
  """Builds the dataset under `data_dir/photo_patches/1.0.0/` unless already built (idempotent)."""
  data_dir = os.path.expanduser(os.fspath(data_dir))
  _offline.prepare(_builder(data_dir), data_dir, name="photos", build_time="a few seconds")


def data_source(data_dir: str, split: str):
  """Random-access source of one split (`len`, `[i]` -> the record dict above)."""
  data_dir = os.path.expanduser(os.fspath(data_dir))
  return _offline.prepared_source(
    _builder(data_dir),
    data_dir,
    split,
    name="photos",
    module="photos",
    splits=NUM_EXAMPLES,
    build_time="a few seconds",
  )
