"""Test-time augmentation: the official FCOS merge (tianzhi0549/FCOS
`fcos_core/engine/bbox_aug.py`), pure and fixed-shape.

Each pass (a short side, flipped or not) gives the pre-NMS candidates of
every level (`postprocess.candidates`); a flipped pass's boxes are
mirrored back (`flip_boxes`) and every pass's boxes are resized to the
first pass's image, as the official `add_preds_t` resizes each BoxList to
the identity transform's size (`pass_candidates`). The merge takes all
candidates of all passes together, runs class-wise NMS at the model's
`nms_iou` once more and keeps the best `max_detections`, as the official
`select_over_all_levels` does on the concatenated box lists; then the boxes
go to original pixels as in plain inference. With one pass unflipped this
is plain inference exactly. The per-pass resize and the device programs
are in `fcos_jax/inference/tta.py`.

Unlike the official code, a flip mirrors x -> w - x (the continuous pixel
convention of this project; the official BoxList.transpose uses w - x - 1),
and exactly `max_detections` are kept (its kthvalue keeps ties at the cut).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from fcos_jax.core import detect, postprocess
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.nms import batched_nms
from fcos_jax.model.config import ModelConfig


def flip_boxes(boxes, width):
  """Boxes [..., N, 4] (x0, y0, x1, y1) found in a horizontally flipped
  image of `width` pixels ([...] or a number) -> the same boxes in the
  unflipped image: x0' = w - x1, x1' = w - x0."""
  w = jnp.asarray(width, jnp.float32)[..., None]
  return jnp.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0],
                    boxes[..., 3]], axis=-1)


def pass_candidates(params, images_uint8, image_hw, base_hw, *,
                    cfg: ModelConfig, hflip: bool = False):
  """One pass: canvas [B, H, W, 3] (each image resized at the top-left,
  flipped there when `hflip`), image_hw [B, 2] its resized size, base_hw
  [B, 2] the first pass's resized size -> `postprocess.candidates` with the
  boxes unflipped and in the first pass's pixels."""
  canvas_hw = images_uint8.shape[1:3]
  outputs = detect.head_outputs(params, images_uint8, image_hw, cfg)
  c = postprocess.candidates(outputs, compute_locations(canvas_hw, cfg),
                             image_hw, cfg)
  hw = jnp.asarray(image_hw).astype(jnp.float32)
  boxes = flip_boxes(c["boxes"], hw[:, 1]) if hflip else c["boxes"]
  # Exactly 1 for the first pass itself, so it stays bit-identical (x / x
  # need not be 1 where division is not correctly rounded, e.g. XLA:GPU).
  base = jnp.asarray(base_hw).astype(jnp.float32)
  ratio = jnp.where(base == hw, 1.0, base / hw)
  scale = jnp.stack([ratio[:, 1], ratio[:, 0]] * 2, axis=-1)[:, None, :]
  c["boxes"] = jnp.where(c["valid"][..., None], boxes * scale, 0.0)
  return c


def merge(boxes, scores, classes, valid, base_hw, orig_hw, *,
          cfg: ModelConfig):
  """Candidates of all passes, concatenated along N -> detections.

  boxes [B, N, 4] in the first pass's pixels, scores [B, N], classes
  [B, N] int32, valid [B, N] bool; base_hw, orig_hw [B, 2]. Returns the
  dict of `postprocess.postprocess`: boxes [B, K, 4] original pixels,
  scores [B, K], classes [B, K], valid [B, K], best first, K =
  cfg.inference.max_detections, unused slots zero.
  """
  nms = functools.partial(batched_nms,
                          iou_threshold=float(cfg.inference.nms_iou),
                          max_output=int(cfg.inference.max_detections))
  keep, keep_valid = jax.vmap(nms)(boxes, scores, classes, valid)
  boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1)
  scores = jnp.take_along_axis(scores, keep, axis=1)
  classes = jnp.take_along_axis(classes, keep, axis=1)
  boxes = postprocess.to_original_pixels(boxes, base_hw, orig_hw,
                                         cfg.inference.clip_boxes)
  return {"boxes": jnp.where(keep_valid[..., None], boxes, 0.0),
          "scores": jnp.where(keep_valid, scores, 0.0),
          "classes": jnp.where(keep_valid, classes, 0),
          "valid": keep_valid}
