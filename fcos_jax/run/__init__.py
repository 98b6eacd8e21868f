"""The run directory: its layout, config record and resume policy,
checkpoints, categories, and restoring a run's parameters (`Run`)."""

from fcos_jax.run.workdir import Run, abstract_params
