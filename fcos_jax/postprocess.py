"""From head outputs to detections in original image pixels, on the device.

Official FCOS inference (spec section 4), with the torchvision variant chosen
by `cfg.score_thresh_on`:

1. Per level: prob = sigmoid(cls), ctr = sigmoid(centerness).
   Candidates are the (location, class) pairs with
     "prob": prob > score_thresh, ranked by prob * ctr (official);
     "sqrt": sqrt(prob * ctr) > score_thresh, ranked by it (torchvision).
   Keep the best `pre_nms_topk` candidates of each level.
2. Decode (location -/+ distance), clip to the resized image (not the
   canvas); score = sqrt(prob * ctr).
3. Concatenate the levels, class-aware NMS at `nms_iou`, keep the best
   `max_detections`; map the boxes to the original image.

The official code also calls `remove_small_boxes` with min_size 0, which
removes nothing (its widths carry +1), so there is no such step here. Unlike
the official code (clip to w - 1, IoU with +1 widths) we use torchvision's
continuous pixel convention, as the rest of this project does.

Shapes: B = batch, P = locations over all levels, C = classes,
N = candidates over all levels (sum of the per-level top-k), K = detections.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.model import box_coding
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.locations import Locations
from fcos_jax.nms import batched_nms


def _check_inputs(outputs, locations: Locations, image_hw, orig_hw,
                  cfg: ModelConfig):
  """Static shape checks, with the field and the fix named."""
  for key in ("cls_logits", "box_regression", "centerness"):
    if key not in outputs:
      raise KeyError(f"postprocess: outputs has no {key!r} (keys: "
                     f"{sorted(outputs)}); pass the dict returned by FCOS.")
  cls, reg, ctr = (outputs[k] for k in ("cls_logits", "box_regression",
                                        "centerness"))
  b, p = cls.shape[:2]
  expected = {"cls_logits": (b, locations.num_locations, cfg.num_classes),
              "box_regression": (b, locations.num_locations, 4),
              "centerness": (b, locations.num_locations)}
  for key, arr in zip(expected, (cls, reg, ctr)):
    if tuple(arr.shape) != expected[key]:
      raise ValueError(
          f"postprocess: outputs[{key!r}] has shape {tuple(arr.shape)}, "
          f"expected {expected[key]} (B, P from compute_locations of the same "
          f"canvas, C = cfg.num_classes); check the canvas and the config.")
  for name, arr in (("image_hw", image_hw), ("orig_hw", orig_hw)):
    if tuple(arr.shape) != (b, 2):
      raise ValueError(f"postprocess: {name} has shape {tuple(arr.shape)}, "
                       f"expected ({b}, 2) = (h, w) per image.")


def _level_candidates(cls, reg, ctr, points, stride, cfg: ModelConfig):
  """The top candidates of one level.

  cls [B, L, C] logits, reg [B, L, 4] head distances, ctr [B, L] logits,
  points [L, 2] (x, y) pixels, stride: int (L = H_l * W_l).
  Returns boxes [B, k, 4] canvas pixels (unclipped), scores [B, k] =
  sqrt(prob * ctr), classes [B, k] int32, valid [B, k] bool; k =
  min(pre_nms_topk, L * C).
  """
  b, l, c = cls.shape
  prob = jax.nn.sigmoid(cls.astype(jnp.float32))
  ctr_prob = jax.nn.sigmoid(ctr.astype(jnp.float32))[..., None]
  neg_inf = jnp.float32(-jnp.inf)
  if cfg.score_thresh_on == "prob":
    # Official: threshold on prob, rank by prob * ctr, sqrt after top-k.
    rank = jnp.where(prob > cfg.score_thresh, prob * ctr_prob, neg_inf)
  else:
    # torchvision: threshold and rank on sqrt(prob * ctr).
    score = jnp.sqrt(prob * ctr_prob)
    rank = jnp.where(score > cfg.score_thresh, score, neg_inf)
  k = min(cfg.pre_nms_topk, l * c)
  top, flat_index = jax.lax.top_k(rank.reshape(b, l * c), k)
  valid = top > neg_inf
  scores = jnp.sqrt(top) if cfg.score_thresh_on == "prob" else top
  loc = flat_index // c
  classes = (flat_index % c).astype(jnp.int32)

  reg = jnp.take_along_axis(reg.astype(jnp.float32), loc[..., None], axis=1)
  ltrb = box_coding.distances_to_pixels(
      reg, np.full((k,), stride, np.float32), cfg)
  boxes = jax.vmap(box_coding.decode_boxes)(jnp.asarray(points)[loc], ltrb)
  return boxes, jnp.where(valid, scores, 0.0), classes, valid


def postprocess(outputs, locations: Locations, image_hw, orig_hw,
                cfg: ModelConfig):
  """Head outputs -> at most K = cfg.max_detections detections per image.

  Args:
    outputs: dict of the FCOS head, levels concatenated (P3 first):
      cls_logits [B, P, C] logits, box_regression [B, P, 4] activated
      distances (stride units if cfg.norm_reg_targets, else pixels),
      centerness [B, P] logits.
    locations: `compute_locations(canvas_hw, cfg)` for the same canvas.
    image_hw: [B, 2] int (h, w) of the resized image inside the canvas.
    orig_hw: [B, 2] int (h, w) of the original image.
    cfg: the model config (score_thresh, score_thresh_on, pre_nms_topk,
      nms_iou, max_detections, num_classes, norm_reg_targets).

  Returns a dict, sorted by decreasing score per image:
    boxes   [B, K, 4] float32 (x0, y0, x1, y1) in original image pixels,
    scores  [B, K] float32 sqrt(prob * ctr),
    classes [B, K] int32 contiguous labels in [0, C),
    valid   [B, K] bool; unused slots hold zeros.
  Static shapes; jit it with `locations` and `cfg` closed over (see
  `make_postprocess_fn`).
  """
  _check_inputs(outputs, locations, image_hw, orig_hw, cfg)
  cls, reg, ctr = (outputs[k] for k in ("cls_logits", "box_regression",
                                        "centerness"))
  per_level = []
  for level, stride in enumerate(cfg.strides):
    sl = locations.level_slice(level)
    per_level.append(_level_candidates(
        cls[:, sl], reg[:, sl], ctr[:, sl], locations.points[sl], stride, cfg))
  boxes, scores, classes, valid = (jnp.concatenate(x, axis=1)
                                   for x in zip(*per_level))

  # Clip to the resized image: the canvas padding lies outside the image.
  image_hw = jnp.asarray(image_hw).astype(jnp.float32)
  hi = jnp.stack([image_hw[:, 1], image_hw[:, 0]] * 2, axis=-1)[:, None, :]
  boxes = jnp.clip(boxes, 0.0, hi)

  nms = functools.partial(batched_nms, iou_threshold=float(cfg.nms_iou),
                          max_output=int(cfg.max_detections))
  keep, keep_valid = jax.vmap(nms)(boxes, scores, classes, valid)

  boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1)
  scores = jnp.take_along_axis(scores, keep, axis=1)
  classes = jnp.take_along_axis(classes, keep, axis=1)

  # To original pixels, with torchvision's float32 ratios orig / resized.
  ratio = jnp.asarray(orig_hw).astype(jnp.float32) / image_hw  # [B, 2] (h, w)
  scale = jnp.stack([ratio[:, 1], ratio[:, 0]] * 2, axis=-1)[:, None, :]
  boxes = boxes * scale
  return {
      "boxes": jnp.where(keep_valid[..., None], boxes, 0.0),
      "scores": jnp.where(keep_valid, scores, 0.0),
      "classes": jnp.where(keep_valid, classes, 0),
      "valid": keep_valid,
  }


def make_postprocess_fn(locations: Locations, cfg: ModelConfig):
  """jit(postprocess) for one canvas: fn(outputs, image_hw, orig_hw) -> dict."""
  def fn(outputs, image_hw, orig_hw):
    return postprocess(outputs, locations, image_hw, orig_hw, cfg)
  return jax.jit(fn)
