"""Restore a checkpoint of a run and evaluate it (the `evaluate.py` job)."""

from __future__ import annotations

import os

import jax

from fcos_jax import runtime
from fcos_jax.evaluation.evaluator import evaluate_params
from fcos_jax.model import param_groups
from fcos_jax.train import checkpoint, optimizer
from fcos_jax.train.config import model_config_from
from fcos_jax.train.loop import create_train_state


def _locate(workdir: str, which: str | None):
  """(checkpoints directory, step or None) from --checkpoint."""
  if which and not which.isdigit():
    path = os.path.abspath(which.rstrip("/"))
    if not os.path.isdir(path) or not os.path.basename(path).isdigit():
      raise FileNotFoundError(
          f"--checkpoint={which}: expected a step number or a checkpoint "
          "directory named by its step (e.g. WORKDIR/checkpoints/5000).")
    return os.path.dirname(path), int(os.path.basename(path))
  return os.path.join(workdir, "checkpoints"), int(which) if which else None


def evaluate_checkpoint(config, workdir: str, which: str | None = None) -> dict:
  mesh = runtime.make_mesh()
  cfg = model_config_from(config.model)
  tx = optimizer.make_optimizer(
      config.optim, config.global_batch_size,
      lambda p: param_groups.param_labels(p, cfg))
  abstract = jax.eval_shape(lambda: create_train_state(config, cfg, tx, mesh))
  directory, step = _locate(workdir, which)
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"No checkpoints in {directory}: train first (train.py --workdir "
        f"{workdir}) or pass --checkpoint PATH.")
  manager = checkpoint.make_manager(directory, keep=10**6, save_every=1)
  restored = checkpoint.restore(
      manager, step, checkpoint.abstract_like(abstract, runtime.replicated(mesh)))
  if restored is None:
    raise FileNotFoundError(f"No checkpoint found in {directory}.")
  state, meta = restored
  return evaluate_params(config, state.params, mesh, workdir, meta["step"])
