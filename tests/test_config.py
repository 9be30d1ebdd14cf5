"""vdm_jax.config in process: each model's and denoiser's own rules (their registry
entries' checks, run by `validate`), the training-batch rule, the packaged config files,
command-line overrides, and plugin module names. The field-by-field range checks are in
tests/test_robust.py."""

import pathlib

import pytest
from absl import flags
from ml_collections import config_flags

from vdm_jax import config as config_lib
from vdm_jax import data, models

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def _config(**fields):
  """base_config() with "section.field" overrides (data.name="toy2d" etc.)."""
  c = config_lib.base_config()
  for path, value in fields.items():
    section, name = path.split("__")
    c[section][name] = value
  return c


# (fields, the start of the message validate must give): each a rule of one registry entry.
REFUSED = [
  (
    {"model__denoiser": "mlp", "data__name": "toy2d", "model__scan_layers": True},
    "config.model.scan_layers=True applies to the U-Net denoiser only",
  ),
  (
    {"model__kind": "vae", "model__remat": True},
    "config.model.remat=True applies to the U-Net denoiser only",
  ),
  (
    {"model__kind": "adaptive", "model__scan_layers": True},
    "config.model.scan_layers=True applies to the U-Net denoiser only",
  ),
  (
    {"model__kind": "vae", "model__dtype": "bfloat16"},
    "config.model.dtype='bfloat16' applies to the VDM's denoiser; model.kind='vae'",
  ),
  (
    {"model__kind": "adaptive", "model__conditional": True},
    "config.model.conditional=True applies to model.kind='vdm', got 'adaptive'",
  ),
  (
    {"model__kind": "vae", "loss__time_sampling": "importance"},
    "config.loss.time_sampling applies to diffusion models, not model.kind='vae'",
  ),
  (
    {"model__kind": "vae", "loss__num_steps": 10},
    "config.loss.num_steps=10 but config.model.kind='vae' has no diffusion steps",
  ),
  (
    {"model__kind": "adaptive", "schedule__objective": "variance", "schedule__kind": "monotone"},
    "config.schedule.objective='variance' shapes a learned scalar schedule; model.kind='adaptive'",
  ),
  (
    {"data__name": "toy2d"},
    "config.model.denoiser='unet' needs image data [H, W, C]; toy2d has shape (2,)",
  ),
  (
    {"model__denoiser": "mlp"},
    "config.model.denoiser='mlp' needs flat data [D]; digits has shape (8, 8, 1)",
  ),
  (
    {"model__kind": "adaptive", "data__name": "toy2d"},
    "config.model.denoiser='unet' needs image data",
  ),
  (
    {"data__name": "toy2d", "model__denoiser": "mlp", "model__conditional": True},
    "config.model.conditional=True needs labelled data; dataset 'toy2d' has no labels",
  ),
  (
    {"model__denoiser": "vdm_reference", "model__conditional": True},
    "config.model.conditional=True needs a denoiser with a label embedding",
  ),
  (
    {"model__denoiser": "vdm_reference", "model__prediction": "v"},
    "config.model.denoiser='vdm_reference' predicts eps",
  ),
  (
    {"model__n_embd": 20, "model__norm_groups": 8},
    "config.model.n_embd (20) must be divisible by config.model.norm_groups (8)",
  ),
]


@pytest.mark.parametrize("fields, message", REFUSED, ids=lambda x: None)
def test_each_models_own_rules(fields, message):
  with pytest.raises(ValueError) as error:
    config_lib.validate(_config(**fields))
  assert str(error.value).startswith(message), str(error.value)


# The same fields where the chosen entries do use them: accepted.
ACCEPTED = [
  {"model__scan_layers": True, "model__remat": True},
  {"model__dtype": "bfloat16"},
  {"model__conditional": True},
  {"data__name": "toy2d", "model__denoiser": "mlp", "model__dtype": "bfloat16"},
  {"data__name": "toy2d", "model__denoiser": "mlp", "model__kind": "adaptive"},
  {"model__kind": "vae", "model__n_embd": 20, "model__norm_groups": 8},  # no U-Net: no groups
  {"model__kind": "vae", "data__name": "toy2d"},  # the VAE takes any shape
  {"model__denoiser": "vdm_reference", "model__n_embd": 32},
]


@pytest.mark.parametrize("fields", ACCEPTED, ids=lambda x: None)
def test_what_the_chosen_model_uses_is_accepted(fields):
  config_lib.validate(_config(**fields))


def test_a_new_model_brings_its_own_check():
  calls = []

  def check(config, info):
    calls.append(info.shape)
    if config.model.n_layer > 2:
      raise ValueError(f"config.model.n_layer={config.model.n_layer}: 'shallow' takes <= 2.")

  models.MODELS.register("shallow", lambda config, info: None, check=check)
  try:
    c = _config(model__kind="shallow")
    with pytest.raises(ValueError, match="'shallow' takes <= 2"):
      config_lib.validate(c)
    c.model.n_layer = 2
    config_lib.validate(c)
    assert calls == [(8, 8, 1), (8, 8, 1)]  # run with the dataset's info, on each validate
  finally:
    models.MODELS.unregister("shallow")
  with pytest.raises(ValueError, match=r"config.model.kind='shallow' is not one of \['vdm', "):
    config_lib.validate(c)


def test_check_config_runs_the_denoisers_check_through_the_model():
  info = data.static_info(_config().data)
  models.check_config(_config(), info)
  with pytest.raises(ValueError, match="needs flat data"):
    models.check_config(_config(model__denoiser="mlp"), info)
  # The VAE has no denoiser: the denoiser's rules do not apply.
  models.check_config(_config(model__kind="vae", model__denoiser="mlp"), info)


def test_training_batch_at_most_16_times_the_train_split():
  digits_train = data.DATASETS["digits"].num_examples["train"]  # 1497
  c = _config(train__batch_size=16 * digits_train)
  config_lib.check_training_batch(c)
  c.train.batch_size += 1
  with pytest.raises(ValueError, match=r"train split of 'digits' \(1497 examples\) 16 times over"):
    config_lib.check_training_batch(c)
  config_lib.validate(c)  # a rule of training only: evaluation does not apply it
  # A dataset whose split sizes only its prepared files know is not opened for this.
  config_lib.check_training_batch(_config(data__name="cifar10", train__batch_size=10**8))


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("[!_]*.py")), ids=lambda p: p.stem)
def test_the_packaged_configs_are_valid(path):
  config = config_lib.sibling_config(str(path), path.name)
  config_lib.validate(config)
  config_lib.check_training_batch(config)


def _parse(monkeypatch, *overrides):
  """The config a command line gives: --config=configs/digits.py and `overrides`."""
  argv = ["prog", f"--config={CONFIGS / 'digits.py'}", *overrides]
  monkeypatch.setattr("sys.argv", argv)  # ml_collections reads the overrides from sys.argv
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
  fv(argv)
  return holder.value


def test_command_line_overrides_are_validated(monkeypatch):
  config = _parse(monkeypatch, "--config.model.n_layer=2", "--config.train.batch_size=32")
  assert (config.model.n_layer, config.train.batch_size) == (2, 32)
  config_lib.validate(config)
  with pytest.raises(ValueError, match="needs flat data"):
    config_lib.validate(_parse(monkeypatch, "--config.model.denoiser=mlp"))
  with pytest.raises(ValueError, match="config.train.grad_accum_steps \\(3\\) must divide"):
    config_lib.validate(_parse(monkeypatch, "--config.train.grad_accum_steps=3"))


def test_plugin_module_names():
  c = _config()
  c.imports = " my_pkg.plugin , other ,"
  assert config_lib.plugin_modules(c) == ["my_pkg.plugin", "other"]
  c.imports = "my-pkg"
  with pytest.raises(ValueError, match="'my-pkg' is not a Python module name"):
    config_lib.validate(c)
  c.imports = "vdm_jax_no_such_plugin_module"
  with pytest.raises(ValueError, match="cannot be imported"):
    config_lib.import_plugins(c)


@pytest.mark.parametrize(
  "value, expected",
  [
    ("", None),
    ("3,7", (3, 7)),
    ("0,4", ValueError),
    ("5,5", ValueError),
    ("1,2,3", ValueError),
    ("a,b", ValueError),
  ],
)
def test_profile_steps(value, expected):
  c = _config(train__profile_steps=value)
  if expected is ValueError:
    with pytest.raises(ValueError, match="must be two step numbers"):
      config_lib.profile_steps(c)
  else:
    assert config_lib.profile_steps(c) == expected


def test_the_documented_denoiser_check_runs_in_validate():
  import re

  page = (CONFIGS.parent / "docs" / "extending.md").read_text()
  blocks = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "DENOISERS" in b]
  assert len(blocks) == 2 and "check=check_tiny" in blocks[1]
  namespace = {}
  try:
    for block in blocks:
      exec(block, namespace)
    config_lib.validate(_config(model__denoiser="tiny"))  # digits: images
    with pytest.raises(ValueError, match="config.model.denoiser='tiny' needs images; toy2d"):
      config_lib.validate(_config(model__denoiser="tiny", data__name="toy2d"))
  finally:
    models.DENOISERS.unregister("tiny")
