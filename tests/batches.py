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
