"""The run directory: its layout, config record and resume policy,
checkpoints (falling back past damaged ones), categories, restoring a
run's parameters, the one-writer lock (`Run`); and the checks of a run
config's user-set fields (`validate`)."""

from fcos_jax.run.workdir import Run, abstract_params
