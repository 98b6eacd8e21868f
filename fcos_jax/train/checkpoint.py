"""orbax checkpoints of the train state: periodic, asynchronous, atomic.

A checkpoint holds the whole `TrainState` (parameters, optimizer state,
step) and a small JSON record; the data position is the step itself, since
the input pipeline is a deterministic function of (seed, step). Restoring
takes the shardings of the current mesh, so a checkpoint written on one
topology restores on any other.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, keep: int, save_every: int,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """A manager that keeps the last `keep` checkpoints under `directory`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=max(save_every, 1),
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         force: bool = False) -> bool:
  """Saves at `step` if the interval says so (or `force`); returns whether."""
  saved = manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=force)
  if saved:
    logging.info("Checkpoint for step %d is being written to %s.", step,
                 manager.directory)
  return saved


def abstract_like(state, sharding):
  """ShapeDtypeStructs of `state` placed with `sharding` (for restore)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def restore(manager: ocp.CheckpointManager, step: int | None, abstract_state):
  """Restores (state, meta) at `step` (latest if None) onto the current mesh.

  abstract_state: ShapeDtypeStructs with shardings (see `abstract_like`).
  Returns None when the directory holds no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  if step not in manager.all_steps():
    raise FileNotFoundError(
        f"No checkpoint for step {step} in {manager.directory}; available "
        f"steps: {sorted(manager.all_steps())}.")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]
