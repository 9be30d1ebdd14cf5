"""Loading a trained model for inference: the model built from its config, the mesh of
this process's devices, and the checkpoint's EMA params restored onto it.

Storage (which step, reading and verifying it) is `runtime.checkpoints`; this module adds
what a checkpoint alone does not say: the model and its parameter shapes.
"""

from __future__ import annotations

import jax

from vdm_jax import config as config_lib
from vdm_jax import data, models
from vdm_jax.runtime import checkpoints
from vdm_jax.runtime import mesh as mesh_lib

__all__ = ["load_ema_params"]


def load_ema_params(config, workdir: str, *, step: int | None = None):
  """Restores a checkpoint's EMA params alone, replicated over the current devices.

  Only the `ema_params` subtree is read (no optimizer is built and the Adam moments and raw
  params stay on disk). Works whatever device count trained it: the restore target carries
  this process's mesh. The arrays are verified against the checksums recorded at save time.

  Args:
    config: the run's config (validated here).
    workdir: the run's work directory.
    step: the checkpoint step; None: the latest.

  Returns:
    (model, mesh, ema_params, step).
  """
  config_lib.validate(config)
  mesh = mesh_lib.make_mesh()
  model = models.make_model(config, data.static_info(config.data))
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  target = checkpoints.abstract_tree(shapes, mesh_lib.replicated(mesh))
  params, step = checkpoints.restore_ema_params(workdir, target, step=step)
  return model, mesh, params, step
