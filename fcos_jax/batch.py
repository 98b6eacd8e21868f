"""The batch format shared by the input pipeline, the steps and the tests.

A batch is a dict of arrays with a leading batch axis B. Images share one
fixed canvas (H, W) per batch; boxes are padded to M = `max_boxes`.

  image        uint8   [B, H, W, 3]  RGB, resized image at the top-left,
                                     zeros elsewhere (normalised on device).
  image_hw     int32   [B, 2]        (h, w) of the resized image in the canvas.
  orig_hw      int32   [B, 2]        (h, w) of the original image.
  boxes        float32 [B, M, 4]     (x0, y0, x1, y1), canvas pixels.
  classes      int32   [B, M]        contiguous labels in [0, num_classes).
  box_valid    bool    [B, M]        real (not padding) boxes.
  is_crowd     bool    [B, M]        COCO iscrowd; never a positive.
  image_id     int32   [B]           dataset image id (COCO id).
  example_valid bool   [B]           False for evaluation padding examples.
"""

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
