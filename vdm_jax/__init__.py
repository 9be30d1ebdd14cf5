"""vdm_jax: variational diffusion models in JAX, trained and evaluated by their ELBO.

The pure mathematics (no Flax, no I/O) is importable on its own:

* `vdm_jax.schedules`: gamma(t) = -log SNR(t) schedules, alpha/sigma, discrete alphas.
* `vdm_jax.gaussian`: q(z_t|x) sampler, posterior q(z_s|z_t,x), Gaussian KL.
* `vdm_jax.elbo`: reconstruction, prior and diffusion terms, time sampling, conversions.
* `vdm_jax.hvae`: the seed's two forms of the ELBO of the Markovian hierarchical VAE.
* `vdm_jax.testing`: data distributions with closed-form optimal denoisers.
"""

from vdm_jax import elbo, gaussian, hvae, schedules, testing

__all__ = ["elbo", "gaussian", "hvae", "schedules", "testing"]
__version__ = "0.1.0"
