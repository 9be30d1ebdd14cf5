"""vdm_jax: variational diffusion models in JAX, trained and evaluated by their ELBO.

The pure mathematics (no Flax, no I/O) is importable on its own:

* `vdm_jax.schedules`: gamma(t) = -log SNR(t) schedules, alpha/sigma, discrete alphas.
* `vdm_jax.gaussian`: q(z_t|x) sampler, posterior q(z_s|z_t,x), Gaussian KL.
* `vdm_jax.elbo`: the reconstruction, prior and diffusion terms; bits per dimension.
* `vdm_jax.times`: diffusion times: uniform, antithetic, importance sampling.
* `vdm_jax.predictions`: conversions between predictions of x, epsilon and v.
* `vdm_jax.vae_elbo`: the Gaussian VAE's negative ELBO.
* `vdm_jax.hvae`: the derivation's two forms of the ELBO of the Markovian hierarchical VAE.
* `vdm_jax.testing`: data distributions with closed-form optimal denoisers.
"""

import importlib

__all__ = [
  "elbo",
  "gaussian",
  "hvae",
  "predictions",
  "schedules",
  "testing",
  "times",
  "vae_elbo",
]
__version__ = "0.1.0"


def __getattr__(name: str):
  # The modules are imported when first used: `import vdm_jax` (and the command-line
  # tools' start, which installs their signal handlers first) does not import JAX.
  if name in __all__:
    return importlib.import_module(f"vdm_jax.{name}")
  raise AttributeError(f"module 'vdm_jax' has no attribute {name!r}")
