"""Deprecated: renamed `vdm_jax.evaluation.checkpoint_samples`.

`vdm_jax.sampling` is the samplers' mathematics; this module's old name said the same.
Importing it warns; its names are those of `checkpoint_samples`, except `sample_checkpoint`,
which keeps its old behaviour here (prints one line, returns the paths written).
"""

import warnings

from vdm_jax.evaluation import checkpoint_samples
from vdm_jax.evaluation.checkpoint_samples import draw_samples, jit_sampler, write_sample_grid

__all__ = ["draw_samples", "jit_sampler", "sample_checkpoint", "write_sample_grid"]

warnings.warn(
  "vdm_jax.evaluation.sampling is renamed vdm_jax.evaluation.checkpoint_samples.",
  DeprecationWarning,
  stacklevel=2,
)


def sample_checkpoint(run, **kwargs) -> list[str]:
  """`checkpoint_samples.sample_checkpoint`, printing `render_samples` of its result on
  process 0; returns the paths written (the old interface)."""
  import jax

  result = checkpoint_samples.sample_checkpoint(run, **kwargs)
  if jax.process_index() == 0:
    print(checkpoint_samples.render_samples(result))
  return result["paths"]
