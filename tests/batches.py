"""A random but valid batch (the `fcos_jax.core.batch` format), for tests,
compilation and benchmarks."""

from __future__ import annotations

import numpy as np


def dummy_batch(batch_size: int, canvas_hw: tuple[int, int], max_boxes: int,
                num_classes: int, seed: int = 0,
                boxes_per_image: int | None = None) -> dict[str, np.ndarray]:
  """A random but valid batch, for tests, compilation and benchmarks."""
  rng = np.random.default_rng(seed)
  h, w = canvas_hw
  n = max_boxes if boxes_per_image is None else boxes_per_image
  x0 = rng.uniform(0, w - 8, (batch_size, max_boxes))
  y0 = rng.uniform(0, h - 8, (batch_size, max_boxes))
  bw = np.minimum(rng.uniform(4, w / 2, (batch_size, max_boxes)), w - x0)
  bh = np.minimum(rng.uniform(4, h / 2, (batch_size, max_boxes)), h - y0)
  boxes = np.stack([x0, y0, x0 + bw, y0 + bh], -1).astype(np.float32)
  valid = np.broadcast_to(np.arange(max_boxes)[None, :] < n,
                          (batch_size, max_boxes))
  return {
      "image": rng.integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8),
      "image_hw": np.tile(np.array([h, w], np.int32), (batch_size, 1)),
      "orig_hw": np.tile(np.array([h, w], np.int32), (batch_size, 1)),
      "boxes": np.where(valid[..., None], boxes, 0).astype(np.float32),
      "classes": np.where(valid, rng.integers(0, num_classes, valid.shape), 0
                          ).astype(np.int32),
      "box_valid": np.broadcast_to(valid, (batch_size, max_boxes)).copy(),
      "is_crowd": np.zeros((batch_size, max_boxes), bool),
      "image_id": np.arange(batch_size, dtype=np.int32),
      "example_valid": np.ones((batch_size,), bool),
  }


def one_train_step(cfg, canvas_hw=(64, 96), batch_size=2, seed=0):
  """One official SGD step (no warm-up) of `FCOS(cfg)` from its fresh
  parameters on a dummy batch: (the parameters before, the new state, the
  step's metrics on the host)."""
  import functools

  import jax
  from fcos_jax.model.fcos import init_variables
  from fcos_jax.train import optimizer as optimizer_lib
  from fcos_jax.train.param_groups import param_labels
  from fcos_jax.train.state import TrainState
  from fcos_jax.train.steps import train_step
  params = init_variables(cfg, jax.random.key(0))["params"]
  optim = optimizer_lib.default_optim_config()
  optim.warmup_steps = 0
  tx = optimizer_lib.make_optimizer(optim, 2, param_labels(params, cfg))
  batch = dummy_batch(batch_size, canvas_hw, 3, cfg.num_classes, seed=seed)
  step = jax.jit(functools.partial(
      train_step, cfg=cfg, tx=tx,
      schedule=optimizer_lib.lr_schedule(optim, 2)))
  new, metrics = step(TrainState.create(params, tx), batch)
  return params, new, jax.device_get(metrics)
