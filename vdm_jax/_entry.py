"""The console scripts (`vdm-train`, `vdm-evaluate`, ...): each runs its tool of scripts/
(installed as `vdm_jax_scripts`), or, when the training stack is missing (a bare
`pip install vdm_jax` brings only jax and numpy), exits with one line naming the extra.

Nothing here imports more than the standard library before that check.
"""

import importlib
import importlib.util
import sys

# The top-level modules every tool imports (the `train` extra brings them).
_NEEDED = ("absl", "ml_collections", "flax", "optax", "orbax.checkpoint", "grain")


def _missing() -> list[str]:
  missing = []
  for name in _NEEDED:
    try:
      found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
      found = False
    if not found:
      missing.append(name)
  return missing


def _launch(tool: str) -> None:
  missing = _missing()
  if missing:
    command = "vdm-" + tool.replace("_", "-")
    sys.exit(
      f"error: {command} needs the training stack, which is not installed (missing: "
      f"{', '.join(missing)}). Install it: pip install 'vdm_jax[all]' (or '[train]')."
    )
  from vdm_jax.runtime import signals as _signals  # standard library only (no JAX)

  _signals.install()  # before the tool's imports (JAX): SIGTERM/SIGINT are recorded
  importlib.import_module(f"vdm_jax_scripts.{tool}").run()


def train():
  _launch("train")


def evaluate():
  _launch("evaluate")


def sample():
  _launch("sample")


def import_images():
  _launch("import_images")


def import_vdm_checkpoint():
  _launch("import_vdm_checkpoint")


def benchmark():
  _launch("benchmark")


def codec_table():
  _launch("codec_table")


def certify():
  _launch("certify")


def elbo_forms():
  _launch("elbo_forms")


def time_variance():
  _launch("time_variance")


def class_grid():
  _launch("class_grid")
