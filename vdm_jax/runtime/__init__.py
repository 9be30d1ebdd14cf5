"""Runtime (README "Layout": layer 4, with `vdm_jax.config`): what training, evaluation
and sampling share below them.

* `mesh`: the device mesh, shardings, host <-> device batches.
* `checkpoints`: saving and verifying the train state, restoring the EMA params alone.
* `inference`: `load_ema_params`, a trained model with its EMA params, for inference.
* `workdir`: the run lock (flock locally, a lease object on gs://), the config record.
* `storage`: the path layer of work directories: local paths or gs:// (atomic writes).
* `distributed`: `jax.distributed` start-up from launch flags.
* `signals`: SIGTERM/SIGINT recorded by a handler, honoured at safe points (no JAX).
"""

__all__: list[str] = []  # the modules above are imported by name
