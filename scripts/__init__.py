"""Entry points (installed as the `vdm_jax_scripts` package for the console scripts)."""
