"""Restore a checkpoint's parameters and evaluate them (the `evaluate.py` job).

Only the parameters are read (a read-only orbax manager, partial restore),
so any checkpoint evaluates under any optimizer settings. The files go to
`out`, or to the run's eval/ under a name that never overwrites what
training wrote there (`Run.evaluation_dir`).
"""

from __future__ import annotations

import logging

from fcos_jax import runtime
from fcos_jax.data import sources
from fcos_jax.evaluation.evaluator import evaluate_params
from fcos_jax.model.config_dict import model_config_from
from fcos_jax.run import Run
from fcos_jax.run.validate import validate


def evaluate_checkpoint(config, workdir: str, which: str | None = None,
                        out: str | None = None) -> dict:
  validate(config, needs=("eval", "model"))
  mesh = runtime.make_mesh()
  run = Run(workdir)
  params, step, categories = run.restore_params(
      model_config_from(config.model), which,
      canvas_hw=config.data.canvases[0], mesh=mesh)
  if out is None:
    out = run.evaluation_dir(config, step, sources.split_files(
        config.data, "val")[2])
  logging.info("Evaluation files go to %s.", out)
  return evaluate_params(config, params, mesh, workdir, step, categories,
                         out_dir=out)
