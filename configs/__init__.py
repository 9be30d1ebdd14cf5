"""The packaged configs: `--config=<name>` loads `<name>.py` of this folder (installed as
`vdm_jax_configs`, so the names work outside a clone too)."""
