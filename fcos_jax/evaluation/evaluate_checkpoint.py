"""Restore a checkpoint's parameters and evaluate them (the `evaluate.py` job).

Only the parameters are read (a read-only orbax manager, partial restore),
so any checkpoint evaluates under any optimizer settings.
"""

from __future__ import annotations

import jax

from fcos_jax import runtime, storage
from fcos_jax.data import categories
from fcos_jax.data.errors import DataError
from fcos_jax.evaluation.evaluator import evaluate_params
from fcos_jax.model.fcos import init_variables
from fcos_jax.train import checkpoint
from fcos_jax.train.config import model_config_from


def locate(workdir: str, which: str | None) -> tuple[str, int | None]:
  """(checkpoints directory, step or None) from --checkpoint."""
  if which and not str(which).isdigit():
    p = str(which).rstrip("/")
    name = p.rsplit("/", 1)[-1]
    if not name.isdigit() or not storage.exists(p):
      raise FileNotFoundError(
          f"--checkpoint={which}: expected a step number or a checkpoint "
          "directory named by its step (e.g. WORKDIR/checkpoints/5000).")
    return p[:-len(name) - 1], int(name)
  return storage.join(workdir, "checkpoints"), int(which) if which else None


def abstract_params(cfg, canvas_hw, mesh):
  """ShapeDtypeStructs of the parameters, replicated over `mesh`."""
  shapes = jax.eval_shape(
      lambda: init_variables(cfg, jax.random.key(0), canvas_hw))["params"]
  return checkpoint.abstract_like(shapes, runtime.replicated(mesh))


def run_categories(workdir: str) -> list[dict]:
  saved = categories.read_categories(workdir)
  if saved is None:
    raise DataError(
        f"{storage.join(workdir, categories.FILE)} is missing: it records the "
        "training split's categories (written with the first checkpoint by "
        "train.py). Restore it, or evaluate with the workdir of the run.")
  return saved


def evaluate_checkpoint(config, workdir: str, which: str | None = None) -> dict:
  mesh = runtime.make_mesh()
  cfg = model_config_from(config.model)
  directory, step = locate(workdir, which)
  # The run that made the checkpoint holds its categories (and, with
  # --checkpoint in another run, that run's folder does).
  saved = run_categories(str(storage.path(directory).parent))
  params, step = checkpoint.restore_params(
      directory, step, abstract_params(cfg, tuple(config.data.canvases[0]),
                                       mesh))
  return evaluate_params(config, params, mesh, workdir, step, saved)
