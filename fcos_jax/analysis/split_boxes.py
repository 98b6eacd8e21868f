"""The ground-truth boxes of a split as the model sees them, batched per canvas.

No image is decoded: the boxes come from the annotations and are resized
with the evaluation pipeline's rule (short side max(data.min_size), long
side at most data.max_size; `pipeline.resized_hw_np`, the NumPy twin of the
TF op), clipped to the image and stripped of degenerate boxes as
`transforms.clean_boxes` does, and grouped by the canvas
`pipeline.assign_buckets` gives each image. Crowd boxes are kept and
marked (they never match). Unlike training, nothing is flipped or dropped
for `data.max_boxes`: every box of every image is counted.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from fcos_jax.data import pipeline
from fcos_jax.data.coco_format import ExampleTable


def _clean_scaled(boxes, height, width, out_h, out_w):
  """Clip to the original image, drop empty boxes, scale to the resized
  image in float32 as `transforms.scale_boxes` does. Returns (boxes [k, 4],
  keep [n] bool)."""
  b = np.stack([np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 1], 0, height),
                np.clip(boxes[:, 2], 0, width), np.clip(boxes[:, 3], 0, height)],
               axis=-1).astype(np.float32)
  keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
  sy = np.float32(out_h) / np.float32(height)
  sx = np.float32(out_w) / np.float32(width)
  return b[keep] * np.array([sx, sy, sx, sy], np.float32), keep


def box_batches(table: ExampleTable, data_cfg, batch_size: int
                ) -> Iterator[tuple[tuple[int, int], dict]]:
  """(canvas (H, W), batch) over every image of `table`, canvas by canvas.

  batch: boxes [B, M, 4] float32 canvas pixels, classes [B, M] int32,
  box_valid [B, M], is_crowd [B, M], image_id [B] int64, example_valid [B]
  (False on padding rows of the last batch of a canvas). M is the largest
  box count of the split (at least 1), so one program serves each canvas.
  """
  canvases = [tuple(int(v) for v in c) for c in data_cfg.canvases]
  bucket = pipeline.assign_buckets(table, canvases, data_cfg.min_size,
                                   data_cfg.max_size)
  min_size = (max(data_cfg.min_size) if isinstance(data_cfg.min_size,
                                                    (tuple, list))
              else data_cfg.min_size)
  out_h, out_w = pipeline.resized_hw_np(table.heights, table.widths,
                                        int(min_size), int(data_cfg.max_size))
  m = max(int(np.diff(table.box_splits).max(initial=0)), 1)
  for c, canvas in enumerate(canvases):
    members = np.flatnonzero(bucket == c)
    for start in range(0, len(members), batch_size):
      rows = members[start:start + batch_size]
      batch = {
          "boxes": np.zeros((batch_size, m, 4), np.float32),
          "classes": np.zeros((batch_size, m), np.int32),
          "box_valid": np.zeros((batch_size, m), bool),
          "is_crowd": np.zeros((batch_size, m), bool),
          "image_id": np.full((batch_size,), -1, np.int64),
          "example_valid": np.zeros((batch_size,), bool),
      }
      for r, i in enumerate(rows):
        lo, hi = table.box_splits[i], table.box_splits[i + 1]
        boxes, keep = _clean_scaled(
            table.boxes[lo:hi], table.heights[i], table.widths[i],
            min(out_h[i], canvas[0]), min(out_w[i], canvas[1]))
        k = len(boxes)
        batch["boxes"][r, :k] = boxes
        batch["classes"][r, :k] = table.classes[lo:hi][keep]
        batch["is_crowd"][r, :k] = table.is_crowd[lo:hi][keep]
        batch["box_valid"][r, :k] = True
        batch["image_id"][r] = table.image_ids[i]
        batch["example_valid"][r] = True
      yield canvas, batch
