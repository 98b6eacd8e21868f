"""The jitted train step (pure functions of state and batch).

Under `jax.jit` with the batch sharded over the "data" mesh axis, every sum
in the loss (positive count, centerness sum) runs over the global batch, so
the normalisers are global on any number of devices and hosts.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import optax

from fcos_jax.core import assign, losses
from fcos_jax.core.detect import head_outputs
from fcos_jax.model import batch_stats
from fcos_jax.train import cpu_conv
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import compute_locations
from fcos_jax.train.state import TrainState


def compute_loss(params, batch, cfg: ModelConfig, step=None):
  """Loss and (metrics, BatchNorm batch statistics: empty unless
  backbone_norm="bn") of one batch (see `fcos_jax.core.batch` for the format).
  step: the training step (TOOD's warm-up reads it)."""
  canvas_hw = batch["image"].shape[1:3]
  locations = compute_locations(canvas_hw, cfg)
  with cpu_conv.kernel_gradients_as_gemm(cfg.numerics.conv_kernel_grad):
    if batch_stats.uses_batch_stats(cfg):
      outputs, stats = head_outputs(params, batch["image"], batch["image_hw"],
                                    cfg, batch_stats=True)
    else:
      outputs = head_outputs(params, batch["image"], batch["image_hw"], cfg)
      stats = {}
  tgt = assign.assign(batch["boxes"], batch["classes"], batch["box_valid"],
                      batch["is_crowd"], locations, cfg,
                      outputs=outputs, step=step)
  loss, metrics = losses.fcos_loss(outputs, tgt, locations, cfg)
  return loss, (metrics, stats)


def all_finite(tree) -> jax.Array:
  """Whether every floating-point entry of `tree` is finite (a bool scalar)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def train_step(state: TrainState, batch, *, cfg: ModelConfig,
               tx: optax.GradientTransformation, schedule):
  """One SGD update. Returns (new_state, metrics)."""
  (loss, (metrics, stats)), grads = jax.value_and_grad(
      compute_loss, has_aux=True)(state.params, batch, cfg, state.step)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if stats:  # Trainable BatchNorm: move its running statistics.
    params = batch_stats.update_running_stats(params, stats, cfg.bn_momentum)

  # A non-finite loss, gradient or update (e.g. a NaN learning rate) never
  # reaches the parameters, so no checkpoint can hold one: keep the last
  # good state and remember the step, so the host can stop with a clear error.
  grad_norm = optax.tree.norm(grads)
  ok = (jnp.isfinite(loss) & jnp.isfinite(grad_norm) &
        all_finite((params, opt_state)) & (state.first_bad_step < 0))
  keep = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(ok, n, o), new, old)
  first_bad = jnp.where((state.first_bad_step < 0) & ~ok, state.step,
                        state.first_bad_step)
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state), first_bad_step=first_bad)
  metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                 lr=schedule(state.step))
  return new_state, metrics
