"""The config a run recorded (its latest WORKDIR/config*.json), as a config
file: `--config recorded:WORKDIR`. The commands use it when --config.FIELD
overrides come without --config, so that

  fcos-evaluate --workdir RUN --config.model.inference.score_thresh=0.0

changes the run's own config (each override type-checked by
ml-collections), as it would change a config file.
"""

from fcos_jax.run import Run


def get_config(workdir: str):
  return Run(workdir).recorded_config()
