"""Restore a checkpoint's parameters and evaluate them (the `evaluate.py` job).

Only the parameters are read (a read-only orbax manager, partial restore),
so any checkpoint evaluates under any optimizer settings.
"""

from __future__ import annotations

from fcos_jax import runtime
from fcos_jax.evaluation.evaluator import evaluate_params
from fcos_jax.model.config_dict import model_config_from
from fcos_jax.run import Run


def evaluate_checkpoint(config, workdir: str, which: str | None = None) -> dict:
  mesh = runtime.make_mesh()
  params, step, categories = Run(workdir).restore_params(
      model_config_from(config.model), which,
      canvas_hw=config.data.canvases[0], mesh=mesh)
  return evaluate_params(config, params, mesh, workdir, step, categories)
