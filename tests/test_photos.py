"""Colour data: the offline photo patches, the image-folder importer, codec bits/dim, and an
RGB model trained and evaluated end to end through the CLI.

Every data_dir and image folder is a tmp_path; the folder images are generated PNGs.
"""

import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import PIL.Image
import pytest
from helpers import tiny_config

from vdm_jax import data, models, training
from vdm_jax.config import validate
from vdm_jax.data import folder, photos
from vdm_jax.evaluation import codecs
from vdm_jax.runtime import inference

REPO = pathlib.Path(__file__).parents[1]


def _config(name, data_dir):
  return ml_collections.ConfigDict({"name": name, "data_dir": str(data_dir), "num_workers": 0})


def _split(config, split):
  batches = data.eval_batches(config, split, global_batch_size=256)
  return np.concatenate([b["image"][b["mask"] > 0] for b in batches])


# ---------------------------------------------------------------------------
# Photo patches.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_images():
  return photos.load_photos()


@pytest.fixture(scope="module")
def photo_patches(photo_images):
  return photos.patches(photo_images)


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  data.prepare(_config("photos", data_dir))
  return data_dir


def test_photos_are_colour_photographs_of_the_documented_sizes(photo_images):
  shapes = [image.shape for image in photo_images]
  assert shapes == [
    (427, 640, 3),
    (427, 640, 3),
    (512, 512, 3),
    (300, 451, 3),
    (400, 600, 3),
    (427, 640, 3),
  ]
  for image in photo_images:  # real colour: the channels differ
    assert image.dtype == np.uint8 and np.abs(np.diff(image.astype(int), axis=-1)).mean() > 5


def test_patches_never_straddle_the_split(photo_images, photo_patches):
  masks = photos.split_masks([image.shape[:2] for image in photo_images])
  for split, expected in photos.NUM_EXAMPLES.items():
    p = photo_patches[split]
    assert p["image"].shape == (expected, 32, 32, 3) and p["image"].dtype == np.uint8
    for image, index, (y, x), flipped in zip(
      p["image"], p["photo"], p["position"], p["flipped"], strict=True
    ):
      window = masks[index][y : y + 32, x : x + 32]
      assert window.all() if split == "test" else not window.any()
      source = photo_images[index][y : y + 32, x : x + 32]
      np.testing.assert_array_equal(image, source[:, ::-1] if flipped else source)
  test = photo_patches["test"]
  assert not test["flipped"].any() and (test["position"] % 32 == 0).all()
  keys = {
    (int(i), int(y), int(x)) for i, (y, x) in zip(test["photo"], test["position"], strict=True)
  }
  assert len(keys) == len(test["photo"])  # distinct 32-aligned cells: no overlap
  train_ = photo_patches["train"]
  assert train_["flipped"].sum() * 2 == len(train_["flipped"])  # each window and its mirror
  for index in range(len(photo_images)):  # every photo is in both splits
    assert (test["photo"] == index).sum() > 0 and (train_["photo"] == index).sum() > 0


def test_photos_build_is_deterministic_and_matches_the_patches(photos_dir, photo_patches):
  config = _config("photos", photos_dir)
  assert data.dataset_info(config) == data.DatasetInfo(
    "photos", (32, 32, 3), 256, {"train": 5270, "test": 524}
  )
  for split in ("train", "test"):
    np.testing.assert_array_equal(_split(config, split), photo_patches[split]["image"])
  source = photos.data_source(str(photos_dir), "test")
  assert int(source[7]["photo"]) == photo_patches["test"]["photo"][7]
  np.testing.assert_array_equal(source[7]["position"], photo_patches["test"]["position"][7])
  before = sorted(p.stat().st_mtime_ns for p in (photos_dir / "photo_patches").rglob("*"))
  data.prepare(config)  # idempotent: nothing rewritten
  assert sorted(p.stat().st_mtime_ns for p in (photos_dir / "photo_patches").rglob("*")) == before


def test_changed_photo_pixels_fail_the_build(monkeypatch):
  changed = list(photos.PHOTOS)
  changed[3] = dataclasses.replace(changed[3], sha256="0" * 64)
  monkeypatch.setattr(photos, "PHOTOS", tuple(changed))
  with pytest.raises(ValueError, match=r"'chelsea'.*SHA-256.*expected 0{64}"):
    photos.load_photos()


# ---------------------------------------------------------------------------
# The image-folder importer.
# ---------------------------------------------------------------------------


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path)


def _png_bytes():
  import io

  buffer = io.BytesIO()
  PIL.Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(buffer, "PNG")
  return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path):
  """Eight colour PNGs of different sizes, one in a sub-folder, and a non-image file."""
  rng = np.random.default_rng(0)
  folder_ = tmp_path / "images"
  arrays = {}
  for i in range(8):
    shape = (int(rng.integers(16, 30)), int(rng.integers(16, 30)), 3)
    rel = f"sub/img{i}.png" if i == 3 else f"img{i}.png"
    arrays[rel] = rng.integers(0, 256, shape, dtype=np.uint8)
    _png(folder_ / rel, arrays[rel])
  (folder_ / "notes.txt").write_text("not an image")
  return folder_, arrays


def test_import_crop_mode_and_train_through_the_registry(image_folder, tmp_path):
  images, arrays = image_folder
  data_dir = tmp_path / "tfds"
  summary = folder.import_images(
    images, name="mine", data_dir=data_dir, resolution=8, test_fraction=0.25
  )
  assert summary["num_examples"] == {"train": 6, "test": 2} and summary["ignored_files"] == 1
  config = _config("mine", data_dir)
  assert data.dataset_info(config) == data.DatasetInfo(
    "mine", (8, 8, 3), 256, {"train": 6, "test": 2}
  )
  metadata = json.loads((data_dir / "mine" / "1.0.0" / "metadata.json").read_text())
  for split in ("train", "test"):
    files = sorted(metadata["files"][split])
    got = _split(config, split)
    assert len(got) == len(files)
    for rel, image in zip(files, got, strict=True):
      a = arrays[rel].astype(np.float64)
      side = min(a.shape[:2])
      top, left = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
      square = a[top : top + side, left : left + side]  # the centred square
      # Pillow's box filter: output pixel i averages the input pixels whose centres lie
      # in its box (i s, (i + 1) s], s = side / 8.
      centres = np.arange(side) + 0.5
      scale = side / 8
      inside = (centres > np.arange(8)[:, None] * scale) & (
        centres <= (np.arange(8)[:, None] + 1) * scale
      )  # [8, side]
      weights = inside / inside.sum(axis=1, keepdims=True)
      expected = np.einsum("ih,jw,hwc->ijc", weights, weights, square)
      assert np.abs(image - expected).max() <= 1.0, rel  # Pillow's fixed-point rounding
  assert set(metadata["files"]["train"]).isdisjoint(metadata["files"]["test"])

  # The name is a dataset: config validation, the train iterator and the model read it
  # (training itself is the same path as for the photos, tested end to end below).
  c = tiny_config(data_dir)
  c.data.name = "mine"
  validate(c)
  batch = next(data.make_train_iterator(c.data, global_batch_size=4, seed=0))["image"]
  assert batch.shape == (4, 8, 8, 3)
  vdm = models.make_model(c, data.static_info(c.data))
  assert vdm.vocab_size == 256 and vdm.data_shape == (8, 8, 3)
  params = jax.jit(vdm.init)(jax.random.key(0))
  bpd = jax.jit(lambda p, k: vdm.loss_terms(p, k, jax.random.key(1))["bpd"])(params, batch)
  assert bpd.shape == (4,) and np.isfinite(bpd).all()


def test_import_patches_mode_grey_and_the_split_by_content(tmp_path):
  rng = np.random.default_rng(1)
  images = tmp_path / "images"
  arrays = {f"g{i}.png": rng.integers(0, 256, (20, 13), dtype=np.uint8) for i in range(6)}
  for rel, a in arrays.items():
    _png(images / rel, a)
  _png(images / "copy_of_g0.png", arrays["g0.png"])  # a duplicate: same split as g0
  summary = folder.import_images(
    images, name="grey", data_dir=tmp_path / "tfds", resolution=6, mode="patches"
  )
  assert summary["shape"] == (6, 6, 1)
  metadata = json.loads((tmp_path / "tfds" / "grey" / "1.0.0" / "metadata.json").read_text())
  split_of = {rel: s for s, files in metadata["files"].items() for rel in files}
  assert split_of["g0.png"] == split_of["copy_of_g0.png"]
  config = _config("grey", tmp_path / "tfds")
  for split in ("train", "test"):
    expected = [
      (arrays.get(rel, arrays["g0.png"]))[y : y + 6, x : x + 6, None]
      for rel in sorted(metadata["files"][split])
      for y in (0, 6, 12)
      for x in (0, 6)
    ]
    np.testing.assert_array_equal(_split(config, split), np.stack(expected))
  # Renaming files keeps the split (it is by content); the same call gives the same split.
  for rel in arrays:
    (images / rel).rename(images / f"renamed_{rel}")
  folder.import_images(images, name="grey2", data_dir=tmp_path / "tfds", resolution=6)
  again = json.loads((tmp_path / "tfds" / "grey2" / "1.0.0" / "metadata.json").read_text())
  renamed = {
    rel.removeprefix("renamed_"): s for s, files in again["files"].items() for rel in files
  }
  assert renamed == split_of


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda d: None, r"images' holds 1 file\(s\), none PNG/JPEG \(1 \.txt\)"),
    (lambda d: (d / "bad.png").write_bytes(b"not a png"), r"bad\.png: cannot be read"),
    (
      lambda d: (d / "cut.jpg").write_bytes(_jpeg_bytes()[:300]),
      r"cut\.jpg: cannot be read",
    ),
    (lambda d: _png(d / "small.png", np.zeros((12, 40, 3), np.uint8)), r"small\.png: is 40x12"),
    (
      lambda d: _png(d / "alpha.png", np.full((20, 20, 4), 100, np.uint8)),
      r"alpha\.png: has transparent pixels",
    ),
    (
      lambda d: _png(d / "grey.png", np.zeros((20, 20), np.uint8)),
      r"mixes 1 greyscale and 2 colour.*'grey\.png'.*--channels=3",
    ),
  ],
)
def test_bad_folders_fail_naming_the_file_and_write_nothing(make, match, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  (images / "readme.txt").write_text("x")
  make(images)
  if "none PNG" not in match:
    rng = np.random.default_rng(0)
    for i in range(2):
      _png(images / f"ok{i}.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
  with pytest.raises(folder.ImageFolderError, match=match):
    folder.import_images(images, name="bad", data_dir=tmp_path / "tfds", resolution=16)
  assert not (tmp_path / "tfds").exists()


def _jpeg_bytes():
  import io

  buffer = io.BytesIO()
  rng = np.random.default_rng(0)
  PIL.Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, "JPEG")
  return buffer.getvalue()


def test_import_options_names_and_overwrite(image_folder, tmp_path):
  images, _ = image_folder
  data_dir = tmp_path / "tfds"
  for name, match in [("Cats", "lower case"), ("photos", "vdm_jax's registered"), ("", "lower")]:
    with pytest.raises(folder.ImageFolderError, match=match):
      folder.import_images(images, name=name, data_dir=data_dir)
  with pytest.raises(folder.ImageFolderError, match="does not exist"):
    folder.import_images(tmp_path / "nowhere", name="x", data_dir=data_dir)
  folder.import_images(images, name="cats", data_dir=data_dir, resolution=4, channels=1)
  assert data.static_info(_config("cats", data_dir)).shape == (4, 4, 1)
  with pytest.raises(folder.ImageFolderError, match="already exists.*--overwrite"):
    folder.import_images(images, name="cats", data_dir=data_dir, resolution=4)
  folder.import_images(images, name="cats", data_dir=data_dir, resolution=5, overwrite=True)
  assert data.static_info(_config("cats", data_dir)).shape == (5, 5, 3)
  (data_dir / "not_ours" / "1.0.0").mkdir(parents=True)
  with pytest.raises(folder.ImageFolderError, match="not written by vdm-import-images"):
    folder.import_images(images, name="not_ours", data_dir=data_dir, overwrite=True)
  assert folder.imported_names(data_dir) == ["cats"]
  assert data.splits("cats", str(data_dir)) == ("train", "test") == data.splits("photos")
  with pytest.raises(ValueError, match=r"Unknown dataset data.name='dogs'.*\('cats',\)"):
    data.dataset_info(_config("dogs", data_dir))


def test_every_problem_of_a_folder_is_in_one_error(tmp_path):
  images = tmp_path / "images"
  rng = np.random.default_rng(0)
  _png(images / "ok.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
  _png(images / "sub/grey.png", rng.integers(0, 256, (20, 20), dtype=np.uint8))
  _png(images / "small.png", np.zeros((8, 30, 3), np.uint8))
  (images / "bad.jpg").write_bytes(b"not a jpeg")
  data_dir = tmp_path / "tfds"
  with pytest.raises(folder.ImageFolderError) as error:
    folder.import_images(images, name="Cats", data_dir=data_dir, resolution=16, mode="tiles")
  message = str(error.value)
  assert message.startswith(f"Cannot import {str(images)!r} as dataset 'Cats'; nothing was")
  for fragment in [
    "4 problems to fix",
    "name 'Cats' must be lower case",
    "--name=cats",
    "mode='tiles' is not one of ('crop', 'patches')",
    "1 of the 4 images cannot be used:\n      bad.jpg: cannot be read",
    "mixes 1 greyscale and 2 colour images",  # not to be found only after fixing the rest
    "--channels=3",
  ]:
    assert fragment in message, (fragment, message)
  with pytest.raises(folder.ImageFolderError) as error:  # a valid mode: sizes are checked too
    folder.import_images(images, name="cats", data_dir=data_dir, resolution=16)
  message = str(error.value)
  assert "2 of the 4 images cannot be used" in message and "small.png: is 30x8" in message
  assert "mixes 1 greyscale" in message and not data_dir.exists()


@pytest.mark.parametrize(
  "files, match",
  [
    ({}, r"'[^']*images' is empty \(no files\)\. The images must be PNG or JPEG"),
    (
      {"a.gif": b"x", "b.GIF": b"x", "notes.txt": b"x", ".hidden.png": b"x"},
      r"images' holds 3 file\(s\), none PNG/JPEG \(2 \.gif, 1 \.txt, and 1 hidden",
    ),
    (
      {"one.png": _png_bytes(), "copy.png": _png_bytes()},
      r"at least 2 different images; the folder has 2 image file\(s\) with 1 distinct",
    ),
  ],
)
def test_folder_without_usable_images_says_what_it_holds(files, match, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for rel, content in files.items():
    (images / rel).write_bytes(content)
  with pytest.raises(folder.ImageFolderError, match=match):
    folder.import_images(images, name="mine", data_dir=tmp_path / "tfds", resolution=4)
  assert not (tmp_path / "tfds").exists()


@pytest.mark.parametrize(
  "name, match",
  [
    ("beans", r"tensorflow-datasets catalog's dataset 'beans'.*shadow.*--name=my_beans"),
    ("mnist", r"vdm_jax's registered dataset 'mnist'.*--name=my_mnist"),
    ("cifar100", r"tensorflow-datasets catalog's dataset 'cifar100'.*--name=my_cifar100"),
    ("glue", r"tensorflow-datasets catalog's dataset 'glue'"),  # a builder tfds lists late
    ("sift1m", r"tensorflow-datasets catalog's dataset 'sift1m'"),  # needs h5py to import
    ("photo_patches", r"catalog's dataset 'photo_patches'"),  # the photos' tfds directory
    ("My-Cats", r"lower case letters, digits and underscores.*--name=my_cats"),
    ("2cats", r"starting with a letter"),
  ],
)
def test_import_refuses_names_that_are_taken_or_invalid(name, match, image_folder, tmp_path):
  images, _ = image_folder
  with pytest.raises(folder.ImageFolderError, match=match):
    folder.import_images(images, name=name, data_dir=tmp_path / "tfds", resolution=4)
  assert not (tmp_path / "tfds").exists()
  assert "my_beans" not in folder.tfds_catalog_names() and "beans" in folder.tfds_catalog_names()


def test_import_into_an_unwritable_data_dir(image_folder, tmp_path):
  images, _ = image_folder
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(folder.ImageFolderError, match=r"a_file' is a file.*--data_dir=<writable"):
    folder.import_images(images, name="mine", data_dir=blocker / "tfds", resolution=4)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "images"]


@pytest.mark.slow  # the importer as a subprocess
def test_import_cli(image_folder, tmp_path):
  images, _ = image_folder
  command = [
    sys.executable,
    str(REPO / "scripts" / "import_images.py"),
    f"--images={images}",
    "--name=cli_cats",
    f"--data_dir={tmp_path / 'tfds'}",
    "--resolution=16",
  ]
  proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test:  1 examples from 1 files" in proc.stdout
  assert "--config.data.name=cli_cats" in proc.stdout
  _png(images / "tiny.png", np.zeros((4, 4, 3), np.uint8))
  proc = subprocess.run(
    [*command[:3], "--name=cli_cats2", *command[4:]], capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 1 and "tiny.png: is 4x4, too small" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_register_a_dataset_of_your_own():
  rng = np.random.default_rng(0)
  arrays = {"train": rng.integers(0, 4, (10, 2, 2, 1)), "test": rng.integers(0, 4, (3, 2, 2, 1))}
  dataset = data.Dataset(
    "tiny_in_memory",
    ("train", "test"),
    lambda data_dir, split: arrays[split],
    lambda data_dir: None,
    (2, 2, 1),
    vocab_size=4,
    num_examples={"train": 10, "test": 3},
    uses_data_dir=False,
  )
  data.register(dataset)
  try:
    config = _config("tiny_in_memory", "")
    assert data.dataset_info(config) == data.DatasetInfo(
      "tiny_in_memory", (2, 2, 1), 4, {"train": 10, "test": 3}
    )
    np.testing.assert_array_equal(_split(config, "test"), arrays["test"])
    with pytest.raises(ValueError, match="already registered"):
      data.register(dataset)
    data.register(dataset, replace=True)
  finally:
    del data.DATASETS["tiny_in_memory"]


# ---------------------------------------------------------------------------
# Codecs and simple models.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", codecs.CODECS)
@pytest.mark.parametrize("channels", [1, 3])
def test_codecs_are_lossless_and_measure_compressibility(codec, channels):
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (3, 32, 32, channels), dtype=np.uint8)
  flat = np.full((16, 32, 32, channels), 77, np.uint8)
  noise_bpd = codecs.codec_bits_per_dim(noise, codec)
  assert noise_bpd.shape == (3,) and (noise_bpd > 8.0).all()  # noise does not compress
  assert (codecs.codec_bits_per_dim(flat[:3], codec) < 1.5).all()
  assert codecs.mosaic_bits_per_dim(flat, codec) < 0.1  # one header over the whole set


def test_mosaic_layout():
  images = np.arange(5 * 2 * 3 * 1).reshape(5, 2, 3, 1) % 256
  grid = codecs.mosaic(images)  # 3 per row, 2 rows, the 6th cell empty
  assert grid.shape == (4, 9, 1)
  for i in range(5):
    r, c = divmod(i, 3)
    np.testing.assert_array_equal(grid[2 * r : 2 * r + 2, 3 * c : 3 * c + 3], images[i])
  assert not grid[2:, 6:].any()


def test_independent_categorical_against_counting():
  rng = np.random.default_rng(0)
  vocab = 5
  train_ = rng.integers(0, vocab - 1, (7, 2, 3, 3))  # value 4 never seen: smoothed
  test = rng.integers(0, vocab, (4, 2, 3, 3))
  for shared in (False, True):
    log2_p = codecs.fit_categorical(train_, vocab, alpha=0.5, shared=shared)
    np.testing.assert_allclose(np.exp2(log2_p).sum(-1), 1.0, rtol=1e-12)
    expected = []
    for image in test:
      bits = 0.0
      for (h, w, c), v in np.ndenumerate(image):
        pool = train_[:, :, :, c] if shared else train_[:, h, w, c]
        bits -= math.log2((np.sum(pool == v) + 0.5) / (pool.size + vocab * 0.5))
      expected.append(bits / image.size)
    np.testing.assert_allclose(codecs.categorical_bits_per_dim(log2_p, test), expected)
  rows = codecs.table(train_.astype(np.uint8), test.astype(np.uint8), vocab)
  assert rows[0] == {"method": "uniform", "bpd": math.log2(5), "se": None, "note": "log2 5"}
  assert len(rows) == 7 and all(np.isfinite(r["bpd"]) for r in rows)


def test_codec_table_cli(image_folder, tmp_path):
  images, _ = image_folder
  folder.import_images(images, name="mine", data_dir=tmp_path / "tfds", resolution=16)
  fake_eval = tmp_path / "eval.json"
  fake_eval.write_text(
    json.dumps(
      {"data": "mine", "num_examples": 1, "bpd": 5.5, "bpd_se": 0.25, "checkpoint_step": 9}
      | {"passes": 2, "pass_bpd": [5.4, 5.6], "model": "vdm", "method": "elbo"}
    )
  )
  proc = subprocess.run(
    [
      sys.executable,
      str(REPO / "scripts" / "codec_table.py"),
      "--name=mine",
      f"--data_dir={tmp_path / 'tfds'}",
      f"--eval_json={fake_eval}",
      f"--output={tmp_path / 'rows.json'}",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| VDM (vdm, step 9) | 5.500 | 0.250 | 2 pass(es): 5.400, 5.600 |" in proc.stdout
  assert "| uniform | 8.000 |" in proc.stdout and "WebP lossless" in proc.stdout
  rows = json.loads((tmp_path / "rows.json").read_text())
  png = codecs.codec_bits_per_dim(_split(_config("mine", tmp_path / "tfds"), "test"), "png")
  assert rows[4]["method"].startswith("PNG") and rows[4]["bpd"] == pytest.approx(png.mean())


# ---------------------------------------------------------------------------
# End to end on RGB: train a tiny model on the photo patches, evaluate through the CLI.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_train_and_evaluate_cli_on_photo_patches(photos_dir, tmp_path):
  config = tiny_config(photos_dir, num_steps=3, ckpt_every=3, log_every=3, eval_every=3)
  config.data.name = "photos"
  config.train.batch_size = 8
  config.train.num_samples = 4
  config.train.sample_steps = 3
  config.eval.batch_size = 262
  workdir = tmp_path / "run"
  result = training.train_and_evaluate(config, str(workdir))
  assert result["eval"]["num_examples"] == 524
  grid = np.asarray(PIL.Image.open(workdir / "samples_00000003.png"))
  assert grid.ndim == 3 and grid.shape[-1] == 3  # an RGB grid
  assert np.abs(np.diff(grid.astype(int), axis=-1)).max() > 0  # whose channels differ
  vdm, _, _, _ = inference.load_ema_params(config, str(workdir))
  assert vdm.vocab_size == 256 and vdm.data_shape == (32, 32, 3)

  out = tmp_path / "eval.json"
  proc = subprocess.run(
    [
      sys.executable,
      str(REPO / "scripts" / "evaluate.py"),
      f"--config={REPO / 'configs' / 'photos.py'}",
      f"--workdir={workdir}",
      f"--output={out}",
      "--passes=2",
      f"--config.data.data_dir={photos_dir}",
      "--config.model.n_layer=1",
      "--config.model.n_embd=16",
      "--config.model.norm_groups=8",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  evaluated = json.loads(out.read_text())
  assert evaluated["data"] == "photos" and evaluated["num_examples"] == 524
  assert evaluated["passes"] == 2 and len(evaluated["pass_bpd"]) == 2
  assert np.isfinite(evaluated["bpd"]) and evaluated["bpd"] > 0
  # The same parameters, evaluated in-process after training with other noise draws.
  assert abs(evaluated["bpd"] - result["eval"]["bpd"]) < 6 * evaluated["bpd_se"] + 0.5
