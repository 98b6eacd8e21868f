"""orbax checkpoints of the train state: asynchronous, atomic, any path.

A checkpoint holds the whole `TrainState` (parameters, optimizer state,
step) and a small JSON record; the data position is the step itself, since
the input pipeline is a deterministic function of (seed, step). Restoring
takes the shardings of the current mesh, so a checkpoint written on one
topology restores on any other. Evaluation and prediction restore the
parameters alone (`restore_params`), so they need no optimizer config.

The directory may be a local path or a URL (gs://...): orbax writes through
etils.epath and tensorstore. The loop decides when to save; `save` never
writes a step twice.
"""

from __future__ import annotations

import logging

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.serialization import tensorstore_utils as _ts_utils

from fcos_jax import errors, storage

_policies = ocp.checkpoint_managers


def _bound_orbax_storage_retries() -> None:
  """orbax builds every tensorstore context of a save or restore from two
  module-level dicts (its `get_ts_context`; no handler argument reaches
  them), without a GCS retry bound: tensorstore's default of 32 retries
  kept a run whose storage went down waiting (and its exit blocked) for a
  quarter of an hour. Our bound (storage.TENSORSTORE_GCS_RETRIES) is added
  to both; tests/run/test_storage_down_while_training.py checks that the
  contexts orbax builds carry it (orbax is pinned)."""
  for spec in (_ts_utils._BASE_TS_CONTEXT,  # pylint: disable=protected-access
               _ts_utils._DEFAULT_OCDBT_TS_CONTEXT):  # pylint: disable=protected-access
    spec.update(storage.tensorstore_context())


_bound_orbax_storage_retries()


def make_manager(directory: str, *, keep: int, keep_best: int = 0,
                 best_metric: str = "AP", async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A manager over `directory` (local or URL).

  keep: the last `keep` checkpoints are kept. keep_best: besides those, the
  `keep_best` checkpoints with the highest `best_metric` among those saved
  with evaluation metrics. read_only: for evaluation and prediction (never
  writes or deletes anything).
  """
  policies = [_policies.LatestN(n=max(keep, 1))]
  if keep_best:
    policies.append(_policies.BestN(
        get_metric_fn=lambda metrics: metrics[best_metric], n=keep_best,
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save and not read_only,
      create=not read_only, read_only=read_only,
      preservation_policy=_policies.AnyPreservationPolicy(policies))
  return ocp.CheckpointManager(
      str(storage.path(directory)), options=options,
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict,
         metrics: dict | None = None) -> bool:
  """Saves `step` unless it is saved already; returns whether it started.

  metrics: evaluation metrics of this state (for best-by-metric retention).
  """
  if step in manager.all_steps():
    return False
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)),
      metrics=metrics, force=True)
  logging.info("Checkpoint for step %d is being written to %s.", step,
               manager.directory)
  return True


def abstract_like(state, sharding):
  """ShapeDtypeStructs of `state` placed with `sharding` (for restore)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _check_step(manager, step):
  step = manager.latest_step() if step is None else step
  if step is not None and step not in manager.all_steps():
    raise errors.MissingFileError(
        f"No checkpoint for step {step} in {manager.directory}; available "
        f"steps: {sorted(manager.all_steps())}.")
  return step


def shape_mismatches(manager, step: int, abstract_tree, key: str | None = None
                     ) -> list[str]:
  """'path: stored (..) vs requested (..)' for every leaf that differs
  (missing or extra leaves included); [] when the trees agree."""
  stored = manager.item_metadata(step)["state"].tree
  if key is not None:
    stored = stored[key]
  requested = _shapes_by_path(abstract_tree)
  have = _shapes_by_path(stored)
  out = []
  for name in sorted(set(requested) | set(have)):
    a, b = have.get(name), requested.get(name)
    if a != b:
      out.append(f"{name}: stored {a if a is not None else 'absent'} vs "
                 f"requested {b if b is not None else 'absent'}")
  return out


def _shapes_by_path(tree) -> dict[str, tuple]:
  """{'a/b/0': shape}: orbax stores attributes, dict keys and indices all
  as names, so paths are compared by name alone."""
  def name(k):
    for attr in ("name", "key", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {"/".join(name(k) for k in path): tuple(v.shape) for path, v in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def unlisted_steps(manager) -> list[int]:
  """Step folders (named by a number) that orbax does not list as
  checkpoints (e.g. emptied or never finished), newest first."""
  d = storage.path(str(manager.directory))
  if not d.exists():
    return []
  listed = set(manager.all_steps())
  return sorted((int(p.name) for p in d.iterdir()
                 if p.name.isdigit() and int(p.name) not in listed),
                reverse=True)


def restore_newest(manager, step: int | None, restore_one):
  """(restore_one(s), s, skipped): the newest checkpoint that restores.

  step: None = try the steps newest first, falling back to older ones (each
  one skipped is logged in one line and left in place); a step number =
  that one only. restore_one(step) returns what was restored; a UserError
  from it (e.g. the checkpoint does not fit the config) is raised as it is,
  any other error marks the step damaged. skipped: the damaged steps newer
  than the one restored (complete checkpoints that do not restore; folders
  of interrupted saves, which orbax does not list, are logged only). Raises CheckpointReadError naming every damaged
  step when none restores, MissingFileError when there is none.
  """
  directory = manager.directory
  if step is not None:
    step = _check_step(manager, step)
    try:
      return restore_one(step), step, []
    except errors.UserError:
      raise
    except Exception as e:  # orbax/tensorstore errors of a damaged folder.
      raise errors.CheckpointReadError(
          f"The checkpoint {directory}/{step} cannot be restored "
          f"({errors.root_cause(e)}); it may be damaged. Pick another step "
          f"(available: {sorted(manager.all_steps())}) or omit --checkpoint "
          "for the newest one that restores.") from None
  steps = sorted(manager.all_steps(), reverse=True)
  newest = steps[0] if steps else None
  unfinished = [s for s in unlisted_steps(manager)
                if newest is None or s > newest]
  for s in unfinished:
    logging.warning("Skipping %s/%d: not a complete checkpoint (a save that "
                    "was interrupted?).", directory, s)
  skipped, failures = [], []
  for s in steps:
    try:
      restored = restore_one(s)
    except errors.UserError:
      raise
    except Exception as e:  # orbax/tensorstore errors of a damaged folder.
      failures.append(f"{s} ({errors.root_cause(e)})")
      logging.warning("Checkpoint %s/%d cannot be restored (%s); trying the "
                      "previous one. It is left in place.", directory, s,
                      errors.root_cause(e))
      skipped.append(s)
      continue
    if skipped:
      logging.warning("Restored step %d of %s; skipped damaged step(s) %s.",
                      s, directory, sorted(skipped))
    return restored, s, sorted(skipped)
  if not steps:
    raise errors.MissingFileError(
        f"No checkpoint found in {directory}" + (
            f" (step folder(s) {unfinished} are incomplete)." if unfinished
            else "."))
  raise errors.CheckpointReadError(
      f"No checkpoint in {directory} can be restored: step(s) "
      f"{', '.join(failures)} are damaged. "
      "Restore them from a copy, or move the step folders elsewhere to start "
      "the run again from scratch (nothing was deleted).")


def restore(manager: ocp.CheckpointManager, step: int | None, abstract_state):
  """Restores (state, meta) at `step` (latest if None) onto the current mesh.

  abstract_state: ShapeDtypeStructs with shardings (see `abstract_like`),
  of the same type as the saved state. Returns None when the directory holds
  no checkpoint.
  """
  step = _check_step(manager, step)
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item=abstract_state,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract_state)),
      meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


def restore_params(directory: str, step: int | None, abstract_params):
  """(params, step) of a checkpoint, without the optimizer state.

  directory: a run's checkpoints folder (local or URL); step None = the
  newest that restores (damaged ones are skipped, logged, left in place).
  abstract_params: ShapeDtypeStructs of the parameters (shardings set for
  jax arrays). A read-only manager: nothing is written or deleted.
  Raises MissingFileError when there is no such checkpoint,
  CheckpointReadError when none restores, ConfigError naming the
  parameters whose shapes differ from the checkpoint's.
  """
  if not storage.exists(directory):
    raise errors.MissingFileError(f"No checkpoints in {directory}.")
  manager = make_manager(directory, keep=1, read_only=True)
  try:
    params, step, _ = restore_newest(
        manager, step, lambda s: _restore_params_at(manager, s, directory,
                                                   abstract_params))
  finally:
    manager.close()
  return params, int(step)


def _restore_params_at(manager, step, directory, abstract_params):
  bad = shape_mismatches(manager, step, abstract_params, key="params")
  if bad:
    raise errors.ConfigError(
        f"The checkpoint {directory}/{step} does not fit this model config "
        f"({len(bad)} parameter(s) differ): " + "; ".join(bad[:8]) +
        ". Use the run's own config (its config.json) or the model fields it "
        "was trained with.")
  item = {"params": abstract_params}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item=item,
          restore_args=ocp.checkpoint_utils.construct_restore_args(item),
          partial_restore=True)))
  return restored["state"]["params"]
