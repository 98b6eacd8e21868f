"""`train_and_evaluate`: the whole training run, top to bottom.

The order of this file is the order of a run: set-up, model and optimizer,
checkpoint restore, input, compiled step, loop (log, checkpoint, evaluate,
stop on preemption).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from fcos_jax import runtime
from fcos_jax.data import global_batch, pipeline
from fcos_jax.evaluation import evaluator
from fcos_jax.model import param_groups
from fcos_jax.model.fcos import init_variables
from fcos_jax.train import checkpoint, optimizer, steps
from fcos_jax.train.config import model_config_from
from fcos_jax.train.initial_weights import load_initial_params
from fcos_jax.train.metrics_writer import MetricsWriter
from fcos_jax.train.state import TrainState


class NonFiniteLossError(RuntimeError):
  """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


class _StopSignal:
  """Turns SIGTERM/SIGINT into a flag so the loop saves and exits cleanly."""

  def __init__(self):
    self.received = None
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. under some test runners).
        pass

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name


def create_train_state(config, cfg, tx, mesh) -> TrainState:
  """Initial state, created directly with replicated shardings."""
  canvas_hw = tuple(config.data.canvases[0])

  def init(rng):
    params = init_variables(cfg, rng, canvas_hw)["params"]
    return TrainState.create(params, tx)

  rng = jax.random.key(config.seed)
  return jax.jit(init, out_shardings=runtime.replicated(mesh))(rng)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config`, checkpointing to and resuming from `workdir`.

  Returns the last evaluation metrics (empty if none ran).
  """
  # --- Set-up -------------------------------------------------------------
  runtime.enable_compilation_cache(config.compilation_cache_dir)
  mesh = runtime.make_mesh()
  cfg = model_config_from(config.model)
  global_bs = config.global_batch_size
  if global_bs % jax.device_count():
    raise ValueError(
        f"config.global_batch_size={global_bs} is not divisible by the "
        f"{jax.device_count()} devices; use a multiple of {jax.device_count()}.")
  local_bs = global_bs // jax.process_count()
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0
  if is_chief:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  info = pipeline.dataset_info(config.data, split="train")
  if info.num_classes != cfg.num_classes:
    raise ValueError(
        f"config.model.num_classes={cfg.num_classes} but the training data has "
        f"{info.num_classes} categories; set --config.model.num_classes="
        f"{info.num_classes}.")

  # --- Model and optimizer ---------------------------------------------
  labels_fn = lambda params: param_groups.param_labels(params, cfg)
  tx = optimizer.make_optimizer(config.optim, global_bs, labels_fn)
  schedule = optimizer.lr_schedule(config.optim, global_bs)
  state = create_train_state(config, cfg, tx, mesh)

  # --- Checkpoint: resume by itself from the latest one ----------------
  manager = checkpoint.make_manager(
      os.path.join(workdir, "checkpoints"), config.keep_checkpoints,
      config.checkpoint_every_steps, config.async_checkpointing)
  restored = checkpoint.restore(
      manager, None, checkpoint.abstract_like(state, runtime.replicated(mesh)))
  if restored is not None:
    state, meta = restored
    logging.info("Resumed from %s at step %d.", manager.directory, meta["step"])
  elif config.init_backbone:
    params = load_initial_params(state.params, config.init_backbone,
                                 config.init_backbone_format, cfg)
    state = state.replace(params=jax.device_put(params, runtime.replicated(mesh)))
    state = state.replace(opt_state=jax.jit(
        tx.init, out_shardings=runtime.replicated(mesh))(state.params))
    logging.info("Backbone initialised from %s.", config.init_backbone)
  start_step = int(state.step)

  # --- Input ------------------------------------------------------------
  train_ds = pipeline.build_train_dataset(
      config.data, process_batch_size=local_bs,
      process_index=jax.process_index(), process_count=jax.process_count(),
      seed=config.seed, start_step=start_step)
  train_iter = iter(train_ds)

  # --- Compiled step ------------------------------------------------------
  rep, data = runtime.replicated(mesh), runtime.batch_sharded(mesh)
  train_step = jax.jit(
      functools.partial(steps.train_step, cfg=cfg, tx=tx, schedule=schedule),
      in_shardings=(rep, data), out_shardings=(rep, rep), donate_argnums=0)

  # --- Loop -------------------------------------------------------------
  writer = MetricsWriter(workdir, enabled=is_chief)
  stop = _StopSignal()
  total = config.num_train_steps
  pending, last_eval = [], {}
  t_log, step_log = time.time(), start_step
  logging.info("Training steps %d..%d, global batch %d on %d devices.",
               start_step, total, global_bs, jax.device_count())
  for step in range(start_step + 1, total + 1):
    batch = global_batch.to_global_batch(next(train_iter), mesh)
    if step == start_step + 1:
      runtime.compile_everywhere(train_step, state, batch, name="train_step")
    state, metrics = train_step(state, batch)
    pending.append(metrics)

    if step % config.log_every_steps == 0 or step == total:
      _check_finite(state, manager)
      host = jax.device_get(pending)
      pending = []
      now = time.time()
      summary = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      summary["images_per_s"] = (step - step_log) * global_bs / (now - t_log)
      eta = (total - step) * (now - t_log) / max(step - step_log, 1)
      writer.write(step, summary, eta_s=eta, total=total)
      t_log, step_log = now, step

    if manager.should_save(step) or step == total:
      _check_finite(state, manager)
      checkpoint.save(manager, step, state, {"step": step}, force=step == total)

    if config.eval_every_steps and step % config.eval_every_steps == 0 and step != total:
      last_eval = evaluator.evaluate_params(config, state.params, mesh, workdir, step)
      writer.write(step, {f"eval/{k}": v for k, v in last_eval.items()})

    if stop.received or manager.reached_preemption(step):
      _check_finite(state, manager)
      logging.warning("Stopping at step %d (%s): saving a checkpoint.", step,
                      stop.received or "preemption")
      checkpoint.save(manager, step, state, {"step": step}, force=True)
      manager.wait_until_finished()
      writer.close()
      return last_eval

  manager.wait_until_finished()
  if config.eval_at_end:
    last_eval = evaluator.evaluate_params(config, state.params, mesh, workdir, total)
    writer.write(total, {f"eval/{k}": v for k, v in last_eval.items()})
  writer.close()
  return last_eval


def _check_finite(state: TrainState, manager) -> None:
  bad = int(state.first_bad_step)
  if bad >= 0:
    manager.wait_until_finished()
    good = manager.latest_step()
    raise NonFiniteLossError(
        f"The loss or gradient became NaN/inf at step {bad + 1}; no update "
        f"from that step on was applied. The last good checkpoint "
        f"(step {good}) in {manager.directory} is intact. Likely causes: a LR "
        "too high for this batch size (lower config.optim.base_lr or raise "
        "warmup_steps), broken boxes in the data, or bfloat16 overflow "
        "(try --config.model.dtype=float32).")
