"""The official FCOS optimizer: SGD with momentum, coupled L2, step decay.

Matches PyTorch's `torch.optim.SGD` as used by the official recipe:
  g <- g + wd * p          (coupled L2, per parameter group)
  v <- momentum * v + g
  p <- p - lr * v
Parameter groups come from `fcos_jax.train.param_groups.param_labels`:
  "weight": base LR, `weight_decay`
  "norm":   base LR, `weight_decay_norm` (GroupNorm scales)
  "bias":   base LR x `bias_lr_factor`, `weight_decay_bias`
  "frozen": no update and no optimizer state.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import ml_collections
import optax
from fcos_jax import errors

def scaled_base_lr(optim: ml_collections.ConfigDict, global_batch_size: int) -> float:
  """Linear scaling rule: the LR follows the global batch size."""
  if not optim.scale_lr_with_batch:
    return optim.base_lr
  return optim.base_lr * global_batch_size / optim.base_batch_size


def lr_schedule(optim: ml_collections.ConfigDict,
                global_batch_size: int) -> Callable[[Any], Any]:
  """Step -> learning rate: warmup, then x decay_factor at each decay step.

  Warmup (maskrcnn-benchmark's WarmupMultiStepLR): for step < warmup_steps the
  LR is multiplied by `warmup_factor` ("constant") or by
  warmup_factor * (1 - a) + a with a = step / warmup_steps ("linear").

  optax's join_schedules(linear_schedule, piecewise_constant_schedule) gives
  the same values to float32 rounding (tested), not bit for bit: kept as is
  so that a run's LR, and so its result, stays what it was.
  """
  base = scaled_base_lr(optim, global_batch_size)
  boundaries = jnp.asarray(sorted(optim.decay_steps), jnp.int32)
  if optim.warmup_method not in ("constant", "linear"):
    raise errors.ConfigError(f"config.optim.warmup_method={optim.warmup_method!r}: "
                             "use 'constant' or 'linear'.")

  def schedule(step):
    step = jnp.asarray(step, jnp.int32)
    decays = jnp.sum(step >= boundaries) if boundaries.size else 0
    lr = base * optim.decay_factor ** decays
    if optim.warmup_steps > 0:
      if optim.warmup_method == "constant":
        warm = optim.warmup_factor
      else:
        alpha = step / optim.warmup_steps
        warm = optim.warmup_factor * (1 - alpha) + alpha
      lr = jnp.where(step < optim.warmup_steps, lr * warm, lr)
    return lr

  return schedule


def _sgd_group(schedule, lr_factor: float, weight_decay: float, momentum: float,
               nesterov: bool) -> optax.GradientTransformation:
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))  # Coupled L2.
  parts.append(optax.trace(decay=momentum, nesterov=nesterov))
  parts.append(optax.scale_by_learning_rate(lambda s: schedule(s) * lr_factor))
  return optax.chain(*parts)


def make_optimizer(optim: ml_collections.ConfigDict, global_batch_size: int,
                   labels) -> optax.GradientTransformation:
  """The full optimizer for a params tree whose groups are given by `labels`.

  labels: a pytree like params with one of "weight", "norm", "bias",
  "frozen" per leaf (or a function params -> such a tree).
  """
  schedule = lr_schedule(optim, global_batch_size)
  groups = {
      "weight": _sgd_group(schedule, 1.0, optim.weight_decay, optim.momentum,
                           optim.nesterov),
      "norm": _sgd_group(schedule, 1.0, optim.weight_decay_norm, optim.momentum,
                         optim.nesterov),
      "bias": _sgd_group(schedule, optim.bias_lr_factor, optim.weight_decay_bias,
                         optim.momentum, optim.nesterov),
      # set_to_zero keeps no state: frozen parameters cost no optimizer memory.
      "frozen": optax.set_to_zero(),
  }
  tx = optax.multi_transform(groups, labels)
  if optim.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), tx)
  return tx


def default_optim_config() -> ml_collections.ConfigDict:
  """The official FCOS 1x recipe (batch 16)."""
  c = ml_collections.ConfigDict()
  c.base_lr = 0.01  # LR at `base_batch_size` images per step.
  c.base_batch_size = 16
  c.scale_lr_with_batch = True  # Linear scaling with the global batch size.
  c.momentum = 0.9
  c.nesterov = False
  c.weight_decay = 1e-4  # Coupled L2 on conv kernels and Scale.
  c.weight_decay_norm = 1e-4  # On GroupNorm scales (official: same as weights).
  c.weight_decay_bias = 0.0  # On all biases (conv and norm).
  c.bias_lr_factor = 2.0
  c.warmup_steps = 500
  c.warmup_factor = 1.0 / 3
  c.warmup_method = "constant"  # "constant" (official) or "linear".
  c.decay_steps = (60000, 80000)
  c.decay_factor = 0.1
  c.grad_clip_norm = 0.0  # 0 disables clipping by global norm.
  return c
