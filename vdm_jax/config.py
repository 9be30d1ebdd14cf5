"""The base configuration every `configs/*.py` file starts from, and its validation.

Config files are deltas on `base_config()`: they change only what differs. `validate`
checks a config before anything is allocated, so a bad value fails in a second with a
message that names the field, the value and the valid choices.
"""

from __future__ import annotations

import math

import ml_collections

__all__ = [
  "DTYPES",
  "base_config",
  "import_plugins",
  "plugin_modules",
  "profile_steps",
  "sibling_config",
  "validate",
]

DTYPES = ("float32", "bfloat16")
"""The choices of `config.model.dtype`, the denoiser's compute dtype."""


def base_config() -> ml_collections.ConfigDict:
  """Defaults: the VDM paper's objective on the offline digits data, CPU-sized."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"
  c.data.data_dir = "~/tensorflow_datasets"
  c.data.num_workers = 0

  c.model = ml_collections.ConfigDict()
  c.model.kind = "vdm"  # "vae": the derivation's Gaussian VAE baseline (the vae_* fields)
  c.model.denoiser = "unet"
  c.model.prediction = "eps"  # what the network outputs; the loss is the ELBO regardless
  c.model.n_layer = 4  # residual blocks on the way down (n_layer + 1 up)
  c.model.n_embd = 64  # channels
  c.model.norm_groups = 32
  c.model.dropout = 0.1
  c.model.fourier_features = True
  c.model.attention_everywhere = False  # self-attention after every block, not only the middle
  # Class-conditional VDM (labelled data, e.g. digits): a learned embedding of the batch's
  # "label" is added to the denoiser's conditioning vector; in training each example's label
  # is replaced by a learned null label with probability label_dropout, so that one network
  # is also the unconditional model (classifier-free guidance, the marginal bound).
  c.model.conditional = False
  c.model.label_dropout = 0.1
  # Compute dtype of the denoiser: "bfloat16" runs convolutions, dense layers and attention
  # in bfloat16 on float32 parameters (GroupNorm statistics, Fourier features, the output
  # and every ELBO term stay float32): for GPU/TPU; on 2 CPU cores no faster than float32
  # (n_layer=8 train step 1.71 s vs 1.72 s), and the digits test bpd is unchanged.
  c.model.dtype = "float32"
  # U-Net only. scan_layers: the n_layer down and n_layer + 1 up blocks as two nn.scan loops
  # over stacked parameters: XLA compiles one block per loop instead of 2 n_layer + 1, meant
  # for deep nets on GPU/TPU (docs/benchmarks.md: the unrolled n_layer = 32 did not compile
  # in 200 s on an H200; the scanned one is not yet measured there). Default False because
  # XLA:CPU computes a convolution's weight gradient inside a loop many times slower
  # (docs/benchmarks.md, "Measured facts"): 2 CPU cores, n_layer=8, n_embd=64, batch
  # 16 of 16x16x3, a train step takes 1.7 s unrolled and 29 s scanned, and the scan does
  # not even shorten the compile at this depth (43 s vs 32 s). The two layouts have
  # different parameter trees (models.unet.stack_layer_params converts), so a run resumes
  # only with the value it started with. remat: recompute each block's activations in the
  # backward pass instead of storing them (less memory, about one more forward of compute).
  c.model.scan_layers = False
  c.model.remat = False
  c.model.mlp_hidden = 256  # the MLP denoiser (low-dimensional data)
  c.model.mlp_layers = 4
  c.model.vae_latent_dim = 16  # the Gaussian VAE (model.kind = "vae"): MLP encoder/decoder
  c.model.vae_hidden = 256
  c.model.vae_layers = 2
  # model.kind = "adaptive" (docs/adaptive.md): q(c | x) with c of adaptive_latent_dim
  # dimensions, and c -> per-dimension schedule, both 2-layer MLPs adaptive_hidden wide; the
  # denoiser is model.denoiser, conditioned on c and the gamma map. The schedule's end points
  # are schedule.gamma_min and gamma_max (fixed); schedule.kind is not used.
  c.model.adaptive_latent_dim = 8
  c.model.adaptive_hidden = 128

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "learned_linear"
  c.schedule.gamma_min = -13.3
  c.schedule.gamma_max = 5.0
  # "variance": the learned schedule's shape minimises the diffusion term's variance (the
  # VDM paper's objective; continuous time), its end points the ELBO. "elbo": all the ELBO.
  c.schedule.objective = "elbo"

  c.loss = ml_collections.ConfigDict()
  c.loss.num_steps = 0  # T; 0 = continuous time
  c.loss.antithetic = True
  # "importance": t drawn in proportion to a running sqrt(E[L(t)^2]) per bin and the
  # diffusion term weighted by 1/p(t) (unbiased); "uniform": t ~ U(0, 1] (or U{1..T}).
  c.loss.time_sampling = "uniform"
  c.loss.time_bins = 32  # bins of the importance proposal (continuous time; T bins if T > 0)
  c.loss.time_decay = 0.99  # moving average of the per-bin second moments
  c.loss.vae_num_samples = 1  # L, draws of z per example in the VAE's reconstruction term

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 100
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.01
  c.optim.grad_clip = 1.0  # global norm; 0 disables
  c.optim.ema_decay = 0.999

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64  # global, over all devices and hosts
  c.train.num_steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.ckpt_every = 500
  c.train.max_to_keep = 3
  c.train.num_samples = 64  # sample grid written at each evaluation (0 disables)
  c.train.sample_steps = 200
  # Resuming refuses a config that differs from the checkpoint's in fields that change what
  # it means (model, data, batch size, seed, ...): list here, comma-separated, the fields
  # you mean to change anyway (e.g. "model.dropout,optim.weight_decay").
  c.train.allow_config_changes = ""
  # "replicated": params, optimiser state and EMA on every device; "fsdp": each large array
  # split over the devices (about 1/N of the state's memory per device; same results).
  c.train.sharding = "replicated"
  c.train.fsdp_min_size = 2**14  # "fsdp" leaves arrays of fewer elements replicated
  # Gradient accumulation: each step's batch is cut into this many micro-batches whose
  # gradients are averaged (a lax.scan) before one optimiser step: the same update, with
  # about 1/k of the activation memory. Opt-in for memory on accelerators: on CPU a scanned
  # convolution gradient is ~40x slower (docs/benchmarks.md, "Measured facts"). Must divide
  # batch_size, and batch_size / grad_accum_steps must be divisible by the device count. Changes the random
  # draws (each micro-batch has its own key), so a resume refuses a change of it.
  c.train.grad_accum_steps = 1
  # Device prefetch: while a step runs, the next `prefetch` batches are already copied to
  # the devices (sharded over the mesh). Same batches in the same order; 0 disables.
  c.train.prefetch = 2
  # Profile steps a..b (inclusive), "a,b" with 1 <= a < b: jax.profiler traces them into
  # <workdir>/profile (TensorBoard's profile plugin or xprof read it); "" disables.
  c.train.profile_steps = ""

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.split = "test"

  c.distributed = False  # call jax.distributed.initialize() (multi-host)
  # Plugins: comma-separated Python modules imported before the config is validated (the
  # command-line tools' --import adds to it), e.g. a module that registers a denoiser,
  # a schedule or a dataset. Recorded with the run, so evaluating it imports them again.
  c.imports = ""
  return c


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
  """`get_config()` of the config file `name` beside `config_file`: a base for deltas.

  Config files are loaded by path (not imported as a package), so a variant finds its
  base this way: `c = sibling_config(__file__, "cifar10.py")`.
  """
  import importlib.util
  import os

  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
  spec = importlib.util.spec_from_file_location(f"vdm_jax_config_{name[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def plugin_modules(config: ml_collections.ConfigDict) -> list[str]:
  """The module names of `config.imports` (comma-separated; absent in older configs: none).

  Raises ValueError for an entry that is not a dotted Python module name.
  """
  value = config.get("imports", "")
  if not isinstance(value, str):
    raise ValueError(
      f"config.imports must be a comma-separated string of module names, got {value!r}."
    )
  names = [name.strip() for name in value.split(",") if name.strip()]
  for name in names:
    if not all(part.isidentifier() for part in name.split(".")):
      raise ValueError(
        f"config.imports: {name!r} is not a Python module name (e.g. my_package.my_module)."
      )
  return names


def import_plugins(config: ml_collections.ConfigDict) -> list[str]:
  """Imports the modules of `config.imports` (what they register becomes selectable).

  The current directory is searched too (after everything else on `sys.path`), so a
  module beside where a command is run is found, as with `python -m`. Returns the names.

  Raises:
    ValueError: naming a module that cannot be found, and how to make it importable.
  """
  import importlib
  import os
  import sys

  names = plugin_modules(config)
  if names and os.getcwd() not in sys.path:
    sys.path.append(os.getcwd())
  for name in names:
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
        raise  # the plugin itself imports something missing: its traceback says what
      raise ValueError(
        f"Plugin module {name!r} (config.imports / --import) cannot be imported: {e}. "
        "Install the package that provides it, run from the folder that holds it, or add "
        "that folder to PYTHONPATH."
      ) from e
  return names


def _choice(path: str, value, choices):
  if value not in choices:
    raise ValueError(f"config.{path}={value!r} is not one of {list(choices)}.")


def _is_number(value) -> bool:
  """An int or a finite float (bools are not numbers here, although True is an int).

  NaN compares False with everything, so a range test alone (`value < 0`) lets it through,
  and infinity passes `> 0`: both are refused here, before any comparison.
  """
  if isinstance(value, bool) or not isinstance(value, int | float):
    return False
  return not isinstance(value, float) or math.isfinite(value)


# The computation is float32: a finite Python float beyond its range is infinite there, one
# below its smallest normal number is 0 (or a subnormal that accelerators flush to 0).
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38
# Counts (steps, sizes) become int32 arrays and loop bounds on the devices.
COUNT_LIMIT = 2**31 - 1
# exp(gamma) and exp(-gamma) of a schedule's end points stay finite in float32 within this.
GAMMA_LIMIT = math.log(FLOAT32_MAX)


def _check_float32(path: str, value) -> None:
  """A finite number that float32 represents without overflowing or vanishing."""
  if abs(value) > FLOAT32_MAX:
    raise ValueError(
      f"config.{path}={value!r} is beyond the float32 range the computation uses "
      f"(|x| <= {FLOAT32_MAX:.4g}): it would be infinite there."
    )
  if value != 0 and abs(value) < FLOAT32_TINY:
    raise ValueError(
      f"config.{path}={value!r} is below the smallest normal float32 ({FLOAT32_TINY:.4g}): "
      "the float32 computation would see 0."
    )


def _finite(path: str, value):
  """Any finite number within float32's range (e.g. a schedule's end points)."""
  if not _is_number(value):
    raise ValueError(f"config.{path} must be a finite number, got {value!r}.")
  _check_float32(path, value)


def _positive(path: str, value, *, allow_zero: bool = False, integer: bool = False):
  """A finite number > 0 (>= 0 with `allow_zero`) within float32's range; with `integer`,
  an int >= 1 (>= 0) and <= `COUNT_LIMIT`."""
  if integer:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"config.{path} must be an integer >= {low}, got {value!r}.")
    if value > COUNT_LIMIT:
      raise ValueError(
        f"config.{path}={value} is beyond the int32 counts the computation uses "
        f"(at most 2**31 - 1 = {COUNT_LIMIT})."
      )
  elif not _is_number(value) or value < 0 or (value == 0 and not allow_zero):
    bound = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"config.{path} must be a finite number {bound}, got {value!r}.")
  else:
    _check_float32(path, value)


def _in_unit_interval(path: str, value):
  """0 <= value < 1 (dropout, decay rates, Adam's betas); NaN is refused too."""
  if not _is_number(value) or not 0.0 <= value < 1.0:
    raise ValueError(f"config.{path} must be in [0, 1), got {value!r}.")


def profile_steps(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """`config.train.profile_steps` "a,b" as (a, b), or None for ""; ValueError if malformed."""
  value = config.train.profile_steps
  if not isinstance(value, str):
    raise ValueError(f"config.train.profile_steps must be a string 'a,b' or '', got {value!r}.")
  if not value.strip():
    return None
  parts = value.split(",")
  try:
    a, b = (int(x) for x in parts)
  except ValueError:
    a = b = None
  if len(parts) != 2 or a is None or not 1 <= a < b:
    raise ValueError(
      f"config.train.profile_steps={value!r} must be two step numbers 'a,b' with "
      "1 <= a < b (trace steps a..b), or '' for no profile."
    )
  return a, b


# A training batch may repeat a small train split (a try-out on a few imported images with
# the default batch), but one holding every example more than this many times in each step
# is a mistyped size: it costs time and memory in proportion (a batch of 1,000,000 digits,
# 1,497 examples, ran for over 9 minutes without finishing its first step).
MAX_REPEATS_PER_BATCH = 16


def check_training_batch(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError unless the training batch is at most `MAX_REPEATS_PER_BATCH` times
  the train split (when its size is known without opening the data).

  A rule for training only (`training.train_and_evaluate` applies it after `validate`):
  evaluating or sampling a run trained elsewhere, e.g. on a small split, does not depend on
  its training batch.
  """
  from vdm_jax import data  # local, as in `validate`

  dataset = data.lookup(config.data)
  sizes = dataset.num_examples or {}
  size = sizes.get("train")
  if size is not None and config.train.batch_size > MAX_REPEATS_PER_BATCH * size:
    raise ValueError(
      f"config.train.batch_size={config.train.batch_size} is larger than the train split "
      f"of {dataset.name!r} ({size} examples) {config.train.batch_size / size:.0f} times over: "
      "each step would see every example that often, at that cost in time and memory. Use "
      f"a batch of at most {size} (the usual sizes are 32-512; at most "
      f"{MAX_REPEATS_PER_BATCH * size} is accepted)."
    )


# The fields every config is checked for, whatever its model: (section.field, ...) by kind.
# Counts >= 1 (and < 2**31):
_COUNTS = (
  "model.n_layer",
  "model.n_embd",
  "model.norm_groups",
  "model.mlp_hidden",
  "model.mlp_layers",
  "model.vae_latent_dim",
  "model.vae_hidden",
  "model.vae_layers",
  "model.adaptive_latent_dim",
  "model.adaptive_hidden",
  "loss.time_bins",
  "loss.vae_num_samples",
  "train.batch_size",
  "train.num_steps",
  "train.log_every",
  "train.eval_every",
  "train.ckpt_every",
  "train.max_to_keep",
  "train.sample_steps",
  "train.fsdp_min_size",
  "train.grad_accum_steps",
  "eval.batch_size",
)
# Counts where 0 means none (or, for loss.num_steps, continuous time):
_COUNTS_OR_ZERO = ("loss.num_steps", "optim.warmup_steps", "train.num_samples", "train.prefetch")
# Finite numbers > 0, and >= 0 (grad_clip 0 disables clipping; NaN must not):
_POSITIVE = ("optim.learning_rate", "optim.eps")
_POSITIVE_OR_ZERO = ("optim.weight_decay", "optim.grad_clip")
# Rates in [0, 1):
_UNIT_INTERVAL = (
  "model.dropout",
  "model.label_dropout",
  "loss.time_decay",
  "optim.b1",
  "optim.b2",
  "optim.ema_decay",
)


def _get(config: ml_collections.ConfigDict, path: str):
  section, name = path.split(".")
  return config[section][name]


def _check_choices(config: ml_collections.ConfigDict) -> None:
  """Every field that names a choice: of a registry, or of a fixed list."""
  from vdm_jax import models, predictions

  choices = {
    "model.kind": models.MODELS,
    "model.denoiser": models.DENOISERS,
    "model.prediction": predictions.PARAMETERIZATIONS,
    "schedule.kind": models.SCHEDULES,
    "model.dtype": DTYPES,
    "schedule.objective": ("elbo", "variance"),
    "loss.time_sampling": ("uniform", "importance"),
    "train.sharding": ("replicated", "fsdp"),
  }
  for path, valid in choices.items():
    _choice(path, _get(config, path), valid)


def _check_numbers(config: ml_collections.ConfigDict) -> None:
  """Counts, rates and magnitudes, each finite and within what float32 / int32 hold."""
  for path in _COUNTS:
    _positive(path, _get(config, path), integer=True)
  for path in _COUNTS_OR_ZERO:
    _positive(path, _get(config, path), allow_zero=True, integer=True)
  for path in _POSITIVE:
    _positive(path, _get(config, path))
  for path in _POSITIVE_OR_ZERO:
    _positive(path, _get(config, path), allow_zero=True)
  for path in _UNIT_INTERVAL:
    _in_unit_interval(path, _get(config, path))


def _check_schedule(config: ml_collections.ConfigDict) -> None:
  """The schedule's end points, and what `schedule.objective="variance"` needs."""
  s = config.schedule
  for path in ["schedule.gamma_min", "schedule.gamma_max"]:
    gamma = _get(config, path)
    _finite(path, gamma)
    if abs(gamma) > GAMMA_LIMIT:
      raise ValueError(
        f"config.{path}={gamma!r} is outside [-{GAMMA_LIMIT:.2f}, {GAMMA_LIMIT:.2f}], where "
        "exp(gamma) and exp(-gamma) (the noise-to-signal ratio and its inverse) stay finite "
        "in float32; the defaults are -13.3 and 5.0."
      )
  if not s.gamma_min < s.gamma_max:
    raise ValueError(
      f"config.schedule.gamma_min ({s.gamma_min}) must be below "
      f"config.schedule.gamma_max ({s.gamma_max})."
    )
  if s.objective == "variance" and (s.kind != "monotone" or config.loss.num_steps):
    raise ValueError(
      "config.schedule.objective='variance' learns the shape of a schedule between its end "
      "points in continuous time: it needs config.schedule.kind='monotone' (got "
      f"{s.kind!r}) and config.loss.num_steps=0 (got {config.loss.num_steps})."
    )


def _check_training(config: ml_collections.ConfigDict) -> None:
  """The fields of `config.train` that are more than a count."""
  t = config.train
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(
      f"config.train.grad_accum_steps ({t.grad_accum_steps}) must divide "
      f"config.train.batch_size ({t.batch_size})."
    )
  profile_steps(config)
  if not isinstance(t.allow_config_changes, str):
    raise ValueError(
      "config.train.allow_config_changes must be a comma-separated string of field names, "
      f"got {t.allow_config_changes!r}."
    )


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field of `config`.

  Everything a run would otherwise discover late (after hours of training) is checked
  here, before any file is written: choices, ranges, divisibility, the evaluation split.
  Every numeric field must be finite (NaN or infinity would train nothing, or, for
  `optim.grad_clip`, silently turn clipping off) and representable in float32 (1e39 is
  infinite there, 1e-50 is 0), counts must be integers below 2**31, the schedule's end
  points within +-88.72 (exp(gamma) finite in float32). The rules of one model or
  denoiser (which options it uses, which data shapes it takes) are that registry entry's
  own check (`models.check_config`, on the dataset's `data.static_info`), run once the
  fields it reads are known to be valid choices and numbers. Training also applies `check_training_batch`.
  """
  # Local: config files import this module, and need neither tfds nor Flax to load.
  from vdm_jax import data, models, streams

  if isinstance(config.seed, bool) or not isinstance(config.seed, int):
    raise ValueError(f"config.seed must be an int in [0, 2**32), got {config.seed!r}.")
  if not 0 <= config.seed < 2**32 - streams.MAX_OFFSET:  # the evaluation streams add offsets
    raise ValueError(f"config.seed must be in [0, 2**32 - 2), got {config.seed}.")
  plugin_modules(config)
  dataset = data.lookup(config.data)  # a registered dataset, or one imported into data_dir
  _choice("eval.split", config.eval.split, dataset.splits)
  _check_choices(config)
  _check_numbers(config)
  models.check_config(config, data.static_info(config.data))
  _check_schedule(config)
  _check_training(config)
