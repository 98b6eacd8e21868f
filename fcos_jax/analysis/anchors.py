"""RetinaNet's anchors and their best possible recall, for comparison with
FCOS (paper Table 1).

Anchors follow torchvision's `AnchorGenerator` for `retinanet_resnet50_fpn`:
on P3-P7 (strides 8-128), sizes 32-512 times 2^(0, 1/3, 2/3) (truncated to
whole pixels, as torchvision does) and aspect ratios 0.5, 1, 2: 9 per
location, each base anchor rounded to whole pixels and centred at
(j * sx, i * sy) with the spacing canvas // cells of the level. Matching
follows torchvision's `Matcher`: each anchor goes to the box of highest
IoU when that IoU is >= 0.4; with low-quality matches, every box's best
anchors (all ties) also go to *their* highest-IoU box (which can be another
box). A box is recalled when some anchor ends up matched to it. Crowd and
padding boxes take no part.

Shapes: A = anchors of a canvas, M = padded boxes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.core.locations import level_sizes

STRIDES = (8, 16, 32, 64, 128)
SIZES = (32, 64, 128, 256, 512)
SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECT_RATIOS = (0.5, 1.0, 2.0)
IOU_THRESHOLD = 0.4


def base_anchors(size: int) -> np.ndarray:
  """[9, 4] (x0, y0, x1, y1) around (0, 0): ratio-major, then scale."""
  scales = np.array([int(size * s) for s in SCALES], np.float32)
  h_ratios = np.sqrt(np.array(ASPECT_RATIOS, np.float32))
  w_ratios = np.float32(1) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / 2)


def retinanet_anchors(canvas_hw: tuple[int, int]) -> np.ndarray:
  """[A, 4] float32 anchors of a canvas, levels P3-P7, each row-major over
  its cells with the 9 anchors of a cell together."""
  out = []
  for (h, w), size in zip(level_sizes(canvas_hw, STRIDES), SIZES):
    sy, sx = canvas_hw[0] // h, canvas_hw[1] // w
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32) * sy,
                         np.arange(w, dtype=np.float32) * sx, indexing="ij")
    shifts = np.stack([xs.ravel(), ys.ravel()] * 2, axis=1)  # [h*w, 4]
    out.append((shifts[:, None, :] + base_anchors(size)[None]).reshape(-1, 4))
  return np.concatenate(out).astype(np.float32)


def box_iou(a, b):
  """IoU of [A, 4] against [M, 4] -> [A, M] (torchvision's box_iou)."""
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  lt = jnp.maximum(a[:, None, :2], b[None, :, :2])
  rb = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
  wh = jnp.maximum(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def _one_image(anchors, boxes, usable, low_quality: bool):
  """recalled [M] bool of one image."""
  m = boxes.shape[0]
  iou = jnp.where(usable[None, :], box_iou(anchors, boxes), -1.0)  # [A, M]
  best_box = jnp.argmax(iou, axis=1)                               # [A]
  best_iou = jnp.max(iou, axis=1)
  matched = best_iou >= IOU_THRESHOLD
  if low_quality:
    best_of_box = jnp.max(iou, axis=0)                             # [M]
    # Every anchor tied for some usable box's best IoU (> 0) is matched.
    top = (iou == best_of_box[None, :]) & usable[None, :] & (
        best_of_box[None, :] > 0)
    matched = matched | jnp.any(top, axis=1)
  index = jnp.where(matched, best_box, m)
  return jnp.zeros((m + 1,), bool).at[index].set(True)[:m] & usable


def anchor_recalled_boxes(anchors, boxes, box_valid, is_crowd,
                          low_quality: bool):
  """[B, M] bool: some anchor is matched to the box (see module doc).

  anchors [A, 4]; boxes [B, M, 4] canvas pixels; box_valid, is_crowd [B, M].
  """
  usable = jnp.asarray(box_valid, bool) & ~jnp.asarray(is_crowd, bool)
  anchors = jnp.asarray(anchors, jnp.float32)
  return jax.vmap(lambda b, u: _one_image(anchors, b, u, low_quality))(
      jnp.asarray(boxes, jnp.float32), usable)


def anchor_counts(batch, anchors, low_quality: bool) -> dict:
  """Sums over one batch: boxes (usable) and recalled."""
  usable = batch["box_valid"] & ~batch["is_crowd"]
  recalled = anchor_recalled_boxes(anchors, batch["boxes"], batch["box_valid"],
                                   batch["is_crowd"], low_quality)
  return {"boxes": jnp.sum(usable, dtype=jnp.int32),
          "recalled": jnp.sum(recalled, dtype=jnp.int32)}
