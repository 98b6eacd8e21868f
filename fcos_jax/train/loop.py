"""`train_and_evaluate`: the whole training run, top to bottom.

The order of this file is the order of a run: set-up and checks, model and
optimizer, checkpoint restore, the run's record, input, loop (log,
evaluate, checkpoint, stop when every process agrees), and the clean-up
that lets the first error surface alone.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading

import jax
import ml_collections
import numpy as np
from clu import parameter_overview
from jax.experimental import multihost_utils

from fcos_jax import errors, runtime, storage
from fcos_jax.errors import CheckpointWriteError, NonFiniteLossError, WorkdirError
from fcos_jax.data import categories, global_batch, pipeline, sources
from fcos_jax.data.coco_format import dataset_info_of_file
from fcos_jax.evaluation import coco_eval, evaluator
from fcos_jax.train import param_groups
from fcos_jax.model.fcos import init_variables
from fcos_jax.run import Run, checkpoint
from fcos_jax.run.validate import validate
from fcos_jax.train import optimizer, steps
from fcos_jax.model.config_dict import model_config_from
from fcos_jax.train.initial_weights import load_initial_params
from fcos_jax.train.state import TrainState
from fcos_jax.train.writers import StepTrace, TrainProgress, create_writer


def _require_workdir(run: Run) -> list[str]:
  """Makes the workdir now, so a bad one fails before any work; returns the
  local folders this made (removed again if the start fails while they
  are empty)."""
  made = [] if storage.is_url(run.workdir) else [
      p for p in (run.checkpoints, run.workdir) if not storage.exists(p)]
  try:
    storage.makedirs(run.checkpoints)
  except OSError as e:
    raise WorkdirError(
        f"Cannot make or write --workdir {run.workdir}: "
        f"{type(e).__name__}: {e.strerror or e}. Choose a folder (or gs:// "
        "URL) this process can write.") from None
  return made


def _remove_if_empty(folders) -> None:
  """After a failed start: the folders `_require_workdir` made, if nothing
  was written into them (never a file of anyone's)."""
  for folder in folders:
    try:
      os.rmdir(folder)
    except OSError:  # Not empty, or gone: leave it.
      pass


# After SIGTERM/SIGINT, how long the run may take to save and stop before it
# exits regardless. Long enough for a slow but healthy save (a TPU VM is
# reclaimed about 30 s after its notice anyway); a second signal is at once.
GRACE_S = 60.0


class StopRequest:
  """SIGTERM/SIGINT become a flag; all processes agree on the step to stop.

  With one process the loop stops at the step where the signal arrived.
  With several, each process's flag is reduced over all processes every
  `check_every` steps (a small collective), so every process stops at the
  same step, saves the same checkpoint and exits cleanly. A preemption
  notice that jax's preemption sync manager receives (TPU maintenance)
  stops at its agreed step too.

  A signal is always honoured: if the loop has not stopped with its
  checkpoints written `grace_s` after the first signal (a checkpoint write
  to storage that stopped answering, say), or at a second signal, the
  process exits at once with status
  128 + signal and one line; the checkpoints already complete are intact
  (orbax commits a step atomically) and a lock left behind is taken over by
  the next start.
  """

  def __init__(self, check_every: int, describe_wait=lambda: "",
               grace_s: float = GRACE_S, during_start_up: bool = False):
    self.received = None
    self.check_every = max(int(check_every), 1)
    self.describe_wait = describe_wait
    self._grace_s = grace_s
    self._watchdog = None
    self._signum = None
    self._start_up = during_start_up
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. under some test runners).
        pass

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.received is not None:
      self._exit_now(signum, f"a second {name}")
    self.received, self._signum = name, signum
    self._watchdog = threading.Timer(
        self._grace_s, self._exit_now,
        args=(signum, f"{name} {self._grace_s:.0f} s ago"))
    self._watchdog.daemon = True
    self._watchdog.start()
    if self._start_up:
      # Raised wherever the main thread is. Where Python cannot propagate
      # it (a gc callback, a __del__), it is dropped quietly (see
      # `_quiet_unraisable`) and `start_loop` stops the run instead.
      raise errors.StoppedBeforeTraining(name, 128 + signum)
    logging.warning("%s received: stopping at the next agreed step.", name)

  def start_loop(self) -> None:
    """From here a signal only sets the flag the loop checks. A signal whose
    start-up exception was dropped stops the run now, before any step."""
    self._start_up = False
    if self.received is not None:
      raise errors.StoppedBeforeTraining(self.received, 128 + self._signum)

  def saves_finished(self) -> None:
    """The loop has stopped and its checkpoints are written: what is left
    (closing files, the processes' shutdown barrier) needs no deadline
    from us, so a slow but healthy exit is not cut short."""
    if self._watchdog is not None:
      self._watchdog.cancel()

  def _exit_now(self, signum, what):
    print(f"error: stopped by {what} before the run could stop cleanly"
          f"{self.describe_wait()}; exiting now. The checkpoints already "
          "complete are intact; run the same command to resume.",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)  # pylint: disable=protected-access

  def should_stop(self, step: int, manager) -> str | None:
    """The reason to stop after `step`, the same on every process, or None."""
    if manager.reached_preemption(step):
      return "preemption notice"
    if jax.process_count() == 1:
      return self.received
    if step % self.check_every:
      return None
    flags = multihost_utils.process_allgather(
        np.int32(self.received is not None))
    return (self.received or "a signal to another process") if np.max(
        flags) else None


def create_train_state(config, cfg, tx, mesh) -> TrainState:
  """Initial state, created directly with replicated shardings."""
  canvas_hw = tuple(config.data.canvases[0])

  def init(rng):
    params = init_variables(cfg, rng, canvas_hw)["params"]
    return TrainState.create(params, tx)

  rng = jax.random.key(config.seed)
  return jax.jit(init, out_shardings=runtime.replicated(mesh))(rng)


def _check_batch(config) -> None:
  for name in ("global_batch_size", "eval_batch_size"):
    if config[name] % jax.device_count():
      raise errors.ConfigError(
          f"config.{name}={config[name]} is not divisible by the "
          f"{jax.device_count()} devices; use a multiple of "
          f"{jax.device_count()}.")


def _check_val_categories(config, info) -> None:
  """The evaluation split must have the training split's categories: refused
  at start-up, not after the whole run. Reads the annotation JSONs' headers
  only (TFDS: the fixed COCO categories, and data.tfds.val_gt_json if set)."""
  if not (config.eval_at_end or config.eval_every_steps):
    return
  if config.data.source == "tfds" and not config.data.tfds.val_gt_json:
    return
  expected = categories.as_records(info)
  names = ([config.data.tfds.val_gt_json] if config.data.source == "tfds"
           else sorted(set(sources.split_files(config.data, "val")[::2])))
  for js in names:
    categories.check_categories(
        expected, dataset_info_of_file(js), f"the evaluation split ({js})",
        f"the training split ({info.gt_json})")


@contextlib.contextmanager
def _holding_workdir(run: Run, command: str, stop_check_every: int):
  """The workdir's writer lock, held by process 0 for the whole run (the
  other processes learn whether it was taken), and the run's StopRequest:
  a signal during the start-up unwinds it through the `finally`s, so the
  lock is released and nothing is recorded."""
  stop = StopRequest(stop_check_every, during_start_up=True)
  hook = sys.unraisablehook
  sys.unraisablehook = functools.partial(_quiet_unraisable, hook)
  try:
    with _locked(run, command):
      yield stop
  finally:
    sys.unraisablehook = hook


def _quiet_unraisable(default_hook, unraisable) -> None:
  """A start-up stop raised where Python cannot propagate it (a gc callback
  runs the signal handler, say) is dropped without a traceback: the flag it
  set stops the run at `StopRequest.start_loop`."""
  if not isinstance(unraisable.exc_value, errors.StoppedBeforeTraining):
    default_hook(unraisable)


@contextlib.contextmanager
def _locked(run: Run, command: str):
  lock, failure = None, None
  if jax.process_index() == 0:
    try:
      lock = run.lock(command).acquire()
    except errors.WorkdirLockedError as e:
      failure = e
  if jax.process_count() > 1:
    taken = multihost_utils.broadcast_one_to_all(np.int32(lock is not None))
    if not int(taken) and failure is None:
      failure = errors.WorkdirLockedError(
          f"{run.workdir} is in use by another process (process 0 could not "
          "take its lock); use another --workdir.")
  if failure is not None:
    raise failure
  try:
    yield
  finally:
    if lock is not None:
      lock.release()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config`, checkpointing to and resuming from `workdir`
  (a local path or a URL such as gs://bucket/run).

  Returns the last evaluation metrics (empty if none ran).
  """
  # --- Set-up and checks: nothing is written before they pass ------------
  validate(config)
  mesh = runtime.make_mesh()
  cfg = model_config_from(config.model)
  _check_batch(config)
  coco_eval.check_backend(config.eval_backend)  # Fail now, not after training.
  run = Run(workdir)
  made = _require_workdir(run)
  try:
    with _holding_workdir(run, "train.py",
                          config.stop_check_every_steps) as stop:
      return _train(config, run, cfg, mesh, stop)
  except BaseException:
    _remove_if_empty(made)
    raise


def _train(config, run, cfg, mesh, stop) -> dict:
  global_bs = config.global_batch_size
  is_chief = jax.process_index() == 0
  train_split = sources.load_split(config.data, "train")  # Read once.
  info = train_split[1]
  if info.num_classes != cfg.num_classes and not cfg.class_agnostic:
    raise errors.ConfigError(
        f"config.model.num_classes={cfg.num_classes} but the training data has "
        f"{info.num_classes} categories; set --config.model.num_classes="
        f"{info.num_classes}.")
  _check_val_categories(config, info)

  # --- Model and optimizer ---------------------------------------------
  labels_fn = lambda params: param_groups.param_labels(params, cfg)
  tx = optimizer.make_optimizer(config.optim, global_bs, labels_fn)
  schedule = optimizer.lr_schedule(config.optim, global_bs)
  state = create_train_state(config, cfg, tx, mesh)

  # --- Checkpoint: resume by itself from the newest that restores -------
  manager = run.checkpoint_manager(
      keep=config.keep_checkpoints,
      keep_best=config.keep_best_checkpoints,
      best_metric=config.best_checkpoint_metric,
      async_save=config.async_checkpointing)
  try:
    return _run(config, run, cfg, mesh, train_split, tx, schedule, state,
                manager, is_chief, stop)
  except BaseException:
    _abandon(manager)
    raise


def _restore_or_init(config, run, cfg, mesh, info, tx, state, manager):
  latest = manager.latest_step()
  if latest is None:
    if config.init_backbone:
      params = load_initial_params(state.params, config.init_backbone,
                                   config.init_backbone_format, cfg)
      state = state.replace(params=jax.device_put(
          params, runtime.replicated(mesh)))
      state = state.replace(opt_state=jax.jit(
          tx.init, out_shardings=runtime.replicated(mesh))(state.params))
      logging.info("Backbone initialised from %s.", config.init_backbone)
    return state, None
  # Resuming: the same categories, a compatible config, the same shapes.
  saved = run.read_categories()
  if saved is not None:
    categories.check_categories(
        saved, info, what=f"the training split ({info.gt_json})",
        expected_from=run.categories_file)
  for line in run.check_resume(config):
    logging.warning("Config changed on resume (allow_config_change): %s", line)
  abstract = checkpoint.abstract_like(state, runtime.replicated(mesh))

  def restore_one(step):
    bad = checkpoint.shape_mismatches(manager, step, abstract)
    if bad:
      raise errors.ConfigChangeError(
          f"The checkpoint at step {step} in {manager.directory} does not fit "
          f"this config ({len(bad)} array(s) differ): " + "; ".join(bad[:8]) +
          ". Resume with the config the run was started with (its "
          "config.json) or use another --workdir.")
    return checkpoint.restore(manager, step, abstract)

  (state, meta), step, skipped = checkpoint.restore_newest(
      manager, None, restore_one)
  if skipped:
    _set_aside(run, manager, skipped)
  logging.info("Resumed from %s at step %d.", manager.directory, meta["step"])
  return state, meta


def _set_aside(run: Run, manager, steps) -> None:
  """Moves damaged step folders newer than the restored one to
  WORKDIR/checkpoints_damaged/ (kept, not deleted), so the resumed run can
  write those steps again."""
  if jax.process_index() == 0:
    for step in steps:
      src = storage.path(storage.join(run.checkpoints, str(step)))
      dst = storage.path(storage.join(run.damaged_checkpoints, str(step)))
      if dst.exists():
        dst = storage.path(f"{dst}.{np.random.randint(1 << 30):08x}")
      try:
        _move_tree(src, dst)
      except OSError as e:
        raise errors.CheckpointReadError(
            f"The damaged checkpoint {src} could not be moved out of the way "
            f"({e}); move it out of {run.checkpoints} yourself, then resume."
        ) from None
      logging.warning("Moved the damaged checkpoint %s to %s (kept for "
                      "inspection); training goes on from the step before.",
                      src, dst)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("damaged checkpoints set aside")
  manager.reload()


def _move_tree(src, dst) -> None:
  """Moves a folder (local: one rename; URL: each object copied, then the
  source removed once every copy is written)."""
  if not storage.is_url(str(src)):
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)
    return
  files, folders = [], [src]
  while folders:  # epath has no recursive glob on gs://: walk the folders.
    for p in folders.pop().iterdir():
      (folders if p.is_dir() else files).append(p)
  for p in files:
    target = dst / p.relative_to(src)
    target.write_bytes(p.read_bytes())
  src.rmtree()


def _run(config, run, cfg, mesh, train_split, tx, schedule, state,
         manager, is_chief, stop) -> dict:
  info = train_split[1]
  state, meta = _restore_or_init(config, run, cfg, mesh, info, tx, state,
                                 manager)
  start_step = int(state.step)
  total = config.num_train_steps
  global_bs = config.global_batch_size

  if is_chief:
    _log_parameter_counts(state.params, cfg)

  def write_record():
    """The run's record (this start's config; the categories on the first
    start), written once the start has worked (first batch built, step
    compiled): a start that fails leaves the record as it was."""
    if is_chief:
      storage.makedirs(run.workdir)
      logging.info("Config recorded in %s.", run.write_config(config))
      if meta is None:
        run.write_categories(info)

  # --- Input ------------------------------------------------------------
  train_iter = pipeline.build_train_dataset(
      config.data, process_batch_size=global_bs // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      seed=config.seed, start_step=start_step, split=train_split)

  # --- Compiled step ------------------------------------------------------
  rep, data = runtime.replicated(mesh), runtime.batch_sharded(mesh)
  train_step = jax.jit(
      functools.partial(steps.train_step, cfg=cfg, tx=tx, schedule=schedule),
      in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)

  # --- Loop -------------------------------------------------------------
  writer = create_writer(run.tensorboard, is_chief)
  progress = TrainProgress(num_train_steps=total, global_batch_size=global_bs,
                           every_steps=config.log_every_steps, writer=writer,
                           start_step=start_step)
  trace = None
  if config.profile_steps and is_chief:
    trace = StepTrace(run.tensorboard,
                      first_step=max(config.profile_first_step, start_step + 1),
                      num_steps=config.profile_steps)
    trace(start_step)
  stop.describe_wait = lambda: _save_in_flight(manager)
  compiled_canvases = set()
  pending, last_eval, stopped = [], {}, None
  logging.info("Training steps %d..%d, global batch %d on %d devices.",
               start_step, total, global_bs, jax.device_count())
  try:
    stop.start_loop()
    progress(start_step)
    for step in range(start_step + 1, total + 1):
      batch = global_batch.to_global_batch(next(train_iter), mesh)
      canvas = batch["image"].shape[1:3]
      if canvas not in compiled_canvases:  # Compile time is not train time.
        with progress.timed("compile"):
          runtime.compile_everywhere(train_step, state, batch,
                                     name="train_step")
        if not compiled_canvases:
          write_record()
        compiled_canvases.add(canvas)
      state, metrics = train_step(state, batch)
      pending.append(metrics)

      if step % config.log_every_steps == 0 or step == total:
        _check_finite(state, manager)
        host = jax.device_get(pending)
        pending = []
        summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        writer.write_scalars(step, summary)
      progress(step)
      if trace:
        trace(step)

      reason = stop.should_stop(step, manager)
      evaluate_now = (config.eval_every_steps and not reason and step != total
                      and step % config.eval_every_steps == 0)
      if evaluate_now:
        with progress.timed("eval"):
          last_eval = evaluator.evaluate_params(config, state.params, mesh,
                                                run.workdir, step, info, writer)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in last_eval.items()})
      if step % config.checkpoint_every_steps == 0 or step == total or reason:
        _check_finite(state, manager)
        with progress.timed("checkpoint"), _writing_checkpoints(manager):
          checkpoint.save(manager, step, state, {"step": step},
                          metrics=last_eval if evaluate_now else None)
      if reason:
        stopped = reason
        logging.warning("Stopped at step %d (%s); checkpoint saved. Run the "
                        "same command to resume.", step, reason)
        break
    with progress.timed("checkpoint"):
      _finish_saves(manager)
    stop.saves_finished()
    if config.eval_at_end and not stopped:
      last_eval = evaluator.evaluate_params(config, state.params, mesh,
                                            run.workdir, total, info, writer)
      writer.write_scalars(total, {f"eval/{k}": v for k, v in last_eval.items()})
  except BaseException:
    _close_quietly(trace, writer)  # The first error surfaces alone.
    raise
  if trace:
    trace.close()
  writer.close()
  return last_eval


def _close_quietly(*closables) -> None:
  for c in closables:
    try:
      if c is not None:
        c.close()
    except Exception as e:  # e.g. the TensorBoard copy to storage that is down.
      logging.error("While stopping: %s", e)


def _save_in_flight(manager) -> str:
  try:
    saving = manager.is_saving_in_progress()
  except Exception:  # Only a detail of the message.
    saving = False
  return (f" (a checkpoint write to {manager.directory} had not finished: "
          "is the storage answering?)" if saving else "")


def _log_parameter_counts(params, cfg) -> None:
  """One line per top-level module: trained and frozen parameter counts."""
  labels = param_groups.param_labels(params, cfg)
  lines = []
  for name in params:
    sizes = jax.tree.leaves(jax.tree.map(
        lambda p, l: (p.size, l == "frozen"), params[name], labels[name]),
        is_leaf=lambda x: isinstance(x, tuple))
    n_all = int(parameter_overview.count_parameters(params[name]))
    n_frozen = sum(int(n) for n, frozen in sizes if frozen)
    lines.append(f"{name}: {n_all - n_frozen:,} trained, {n_frozen:,} frozen")
  logging.info("Parameters: %s.", "; ".join(lines))


@contextlib.contextmanager
def _writing_checkpoints(manager):
  """A failed checkpoint write (now or an earlier asynchronous one) becomes
  one clear error naming the directory and the cause."""
  try:
    yield
  except Exception as e:  # orbax wraps the OSError in several layers.
    cause = errors.root_cause(e)
    fix = ("Free space there or choose another --workdir" if "No space" in
           cause or "RESOURCE_EXHAUSTED" in cause else "Check that the storage answers "
           "and can be written (network, permissions, space), then run the "
           "same command to resume")
    raise CheckpointWriteError(
        f"Could not write a checkpoint to {manager.directory}: {cause}. "
        f"{fix}; the checkpoints already complete are intact.") from None


def _finish_saves(manager) -> None:
  """Waits for in-flight checkpoints; a failed write is one clear error."""
  with _writing_checkpoints(manager):
    manager.wait_until_finished()


def _abandon(manager) -> None:
  """After an error: let an in-flight checkpoint finish (or fail) quietly,
  so the first error surfaces alone and no half-written step is left."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # The first error is already on its way up.
    logging.error("A checkpoint in flight also failed: %s", errors.root_cause(e))
  try:
    manager.close()
  except Exception:  # Nothing more to save; don't hide the first error.
    pass


def _check_finite(state: TrainState, manager) -> None:
  bad = int(state.first_bad_step)
  if bad >= 0:
    _finish_saves(manager)
    good = manager.latest_step()
    kept = (f"The last good checkpoint (step {good}) in {manager.directory} "
            "is intact." if good is not None else
            f"There is no checkpoint yet in {manager.directory} (none was "
            "saved before that step).")
    raise NonFiniteLossError(
        f"The loss, gradient or update became NaN/inf at step {bad + 1}; no "
        f"update from that step on was applied or saved. {kept} Likely "
        "causes: a LR "
        "too high for this batch size (lower config.optim.base_lr or raise "
        "warmup_steps), broken boxes in the data, or bfloat16 overflow "
        "(try --config.model.numerics.dtype=float32).")
