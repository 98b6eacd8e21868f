"""From head outputs to detections in original image pixels, on the device.

Official FCOS inference (docs/algorithm.md, "Inference"), with the torchvision variant chosen
by `cfg.inference.score_thresh_on`:

1. Per level: prob = sigmoid(cls), ctr = sigmoid(centerness).
   Candidates are the (location, class) pairs with
     "prob": prob > score_thresh, ranked by prob * ctr (official);
     "sqrt": sqrt(prob * ctr) > score_thresh, ranked by it (torchvision).
   Keep the best `pre_nms_topk` candidates of each level.
2. Decode (location -/+ distance), clip to the resized image (not the
   canvas); score = sqrt(prob * ctr) (`score_combine` "product": prob *
   ctr, mmdetection's; the same order). `clip_boxes=False` keeps the
   boxes as decoded; `min_box_size` >= 0 drops those no wider or taller
   than it (mmdetection's min_bbox_size).
3. Concatenate the levels, class-aware NMS at `nms_iou`, keep the best
   `max_detections`; map the boxes to the original image.

Without a quality branch (GFL's joint score, `outputs.centerness` None),
the class probability is the score: candidates prob > score_thresh, ranked
by prob, score = prob (mmdetection's GFLHead), decoded from the expected
distances (`box_regression`) the same way.

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

from fcos_jax.model.outputs import as_head_outputs
from fcos_jax.core import box_coding
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import Locations
from fcos_jax.core.nms import batched_nms


def _check_inputs(outputs, locations: Locations, image_hw, orig_hw,
                  cfg: ModelConfig):
  """Static shape checks, with the field and the fix named."""
  b = as_head_outputs(outputs, "postprocess").check(
      locations.num_locations, cfg.num_classes, "postprocess")
  for name, arr in (("image_hw", image_hw), ("orig_hw", orig_hw)):
    if tuple(arr.shape) != (b, 2):
      raise ValueError(f"postprocess: {name} has shape {tuple(arr.shape)}, "
                       f"expected ({b}, 2) = (h, w) per image.")


# The fast path of a level gathers the rows of at most this many times
# `pre_nms_topk` locations; a level with more candidate locations takes the
# full (exact, slower) path instead.
CANDIDATE_LOCATIONS_PER_TOPK = 2


def _rank(cls, ctr, cfg: ModelConfig):
  """cls [..., C] and ctr [...] logits -> [..., C] ranking key, -inf where
  the pair is no candidate (see the module docstring). ctr None (no quality
  branch, GFL): prob > score_thresh, ranked by prob, whatever
  score_thresh_on."""
  prob = jax.nn.sigmoid(cls.astype(jnp.float32))
  neg_inf = jnp.float32(-jnp.inf)
  if ctr is None:
    return jnp.where(prob > cfg.inference.score_thresh, prob, neg_inf)
  ctr_prob = jax.nn.sigmoid(ctr.astype(jnp.float32))[..., None]
  if cfg.inference.score_thresh_on == "prob":
    # Official: threshold on prob, rank by prob * ctr, sqrt after top-k.
    return jnp.where(prob > cfg.inference.score_thresh, prob * ctr_prob, neg_inf)
  # torchvision: threshold and rank on sqrt(prob * ctr).
  score = jnp.sqrt(prob * ctr_prob)
  return jnp.where(score > cfg.inference.score_thresh, score, neg_inf)


def _logit_lower_bound(cfg: ModelConfig, quality: bool = True) -> float:
  """A logit below which no (location, class) pair can be a candidate:
  prob > t (official, or no quality branch) or sqrt(prob * ctr) > t, hence
  prob > t^2 (ctr <= 1). The margin absorbs float32 rounding; the exact
  test follows anyway."""
  t = cfg.inference.score_thresh if cfg.inference.score_thresh_on == "prob" else cfg.inference.score_thresh**2
  if not quality:
    t = cfg.inference.score_thresh
  if t <= 0.0:
    return -math.inf
  if t >= 1.0:
    return math.inf
  return math.log(t / (1.0 - t)) - 1e-2


def _level_top_k(cls, ctr, loc_max, sl: slice, k: int, cfg: ModelConfig):
  """The best k candidate pairs of one level.

  cls [B, P, C], ctr [B, P] logits of all levels; loc_max [B, P] the
  largest class logit of each location; sl: the level's slice of P
  (L = its length). Returns (rank [B, k], -inf for no candidate; loc [B, k]
  int32 in [0, P); classes [B, k] int32).

  Fast path: most locations have no class above the threshold. `loc_max`
  tells which locations can hold a candidate; the class rows of up to `cap`
  such locations are gathered (in location order, so ties break as in the
  full path) and ranked. If some image has more candidate locations than
  `cap`, the level takes the full path: rank every pair and top-k them.
  Both give the same result; the fast path avoids reading the level twice
  and the sigmoid of every pair.
  """
  b, _, c = cls.shape
  l = sl.stop - sl.start

  def full():
    rank = _rank(cls[:, sl], None if ctr is None else ctr[:, sl],
                 cfg).reshape(b, l * c)
    top, flat = jax.lax.top_k(rank, k)
    return (top, (flat // c + sl.start).astype(jnp.int32),
            (flat % c).astype(jnp.int32))

  cap = CANDIDATE_LOCATIONS_PER_TOPK * k
  if cap >= l:
    return full()

  level_max = loc_max[:, sl]
  num_locations = jnp.sum(
      level_max > _logit_lower_bound(cfg, ctr is not None), axis=1)

  def fast():
    _, sel = jax.lax.top_k(level_max, cap)  # Every candidate location.
    sel = jnp.sort(sel, axis=1) + sl.start
    rows = jnp.take_along_axis(cls, sel[..., None], axis=1)  # [B, cap, C]
    rank = _rank(rows, None if ctr is None else
                 jnp.take_along_axis(ctr, sel, axis=1), cfg)
    top, flat = jax.lax.top_k(rank.reshape(b, cap * c), k)
    loc = jnp.take_along_axis(sel, flat // c, axis=1)
    return top, loc.astype(jnp.int32), (flat % c).astype(jnp.int32)

  return jax.lax.cond(jnp.any(num_locations > cap), full, fast)


def level_candidates(cls, reg, ctr, loc_max, points, strides, sl: slice,
                     cfg: ModelConfig, with_loc: bool = False):
  """The top candidates of one level, decoded.

  cls [B, P, C] logits, reg [B, P, 4] head distances, ctr [B, P] logits,
  loc_max [B, P] max class logit, points [P, 2] (x, y) pixels, strides [P];
  sl: the level's slice of P (L locations).
  Returns boxes [B, k, 4] canvas pixels (unclipped), scores [B, k] =
  sqrt(prob * ctr), classes [B, k] int32, valid [B, k] bool (and with
  `with_loc`, loc [B, k] int32 location index in [0, P)); k =
  min(pre_nms_topk, L * C).
  """
  k = min(cfg.inference.pre_nms_topk, (sl.stop - sl.start) * cls.shape[-1])
  top, loc, classes = _level_top_k(cls, ctr, loc_max, sl, k, cfg)
  valid = top > -jnp.inf
  # Official: rank prob * ctr, score its sqrt; no quality branch: prob.
  scores = (jnp.sqrt(top) if cfg.inference.score_thresh_on == "prob"
            and ctr is not None else top)
  if ctr is not None and cfg.inference.score_combine == "product":
    # mmdetection's prob * ctr: the same order.
    scores = top if cfg.inference.score_thresh_on == "prob" else top * top

  reg = jnp.take_along_axis(reg, loc[..., None], axis=1).astype(jnp.float32)
  ltrb = box_coding.distances_to_pixels(
      reg, np.full((k,), strides[sl.start], np.float32), cfg)
  boxes = jax.vmap(box_coding.decode_boxes)(jnp.asarray(points)[loc], ltrb)
  out = (boxes, jnp.where(valid, scores, 0.0), classes, valid)
  return out + (loc,) if with_loc else out


def _clipped_candidates(outputs, locations: Locations, image_hw,
                        cfg: ModelConfig):
  """Steps 1-2 of the module docstring over all levels: (boxes [B, N, 4] in
  canvas pixels clipped to the resized image, scores, classes, valid, loc),
  each [B, N]."""
  cls, reg, ctr = outputs.cls_logits, outputs.box_regression, outputs.centerness
  loc_max = cls.max(axis=-1)  # One pass over all levels, for the fast path.
  per_level = [
      level_candidates(cls, reg, ctr, loc_max, locations.points,
                       locations.strides, locations.level_slice(level), cfg,
                       with_loc=True)
      for level in range(cfg.num_levels)]
  boxes, scores, classes, valid, loc = (jnp.concatenate(x, axis=1)
                                        for x in zip(*per_level))

  if cfg.inference.clip_boxes:
    # Clip to the resized image: the canvas padding lies outside the image.
    image_hw = jnp.asarray(image_hw).astype(jnp.float32)
    hi = jnp.stack([image_hw[:, 1], image_hw[:, 0]] * 2, axis=-1)[:, None, :]
    boxes = jnp.clip(boxes, 0.0, hi)
  if cfg.inference.min_box_size >= 0:  # mmdetection's min_bbox_size.
    m = jnp.float32(cfg.inference.min_box_size)
    valid = (valid & (boxes[..., 2] - boxes[..., 0] > m)
             & (boxes[..., 3] - boxes[..., 1] > m))
    scores = jnp.where(valid, scores, 0.0)
  return boxes, scores, classes, valid, loc


def to_original_pixels(boxes, image_hw, orig_hw, clip: bool = True):
  """boxes [B, N, 4] in resized-image pixels -> original pixels, with
  torchvision's float32 ratios orig / resized, clipped to the original
  (unless `clip` is False: `inference.clip_boxes`)."""
  image_hw = jnp.asarray(image_hw).astype(jnp.float32)
  orig_hw = jnp.asarray(orig_hw).astype(jnp.float32)
  ratio = orig_hw / image_hw  # [B, 2] (h, w)
  scale = jnp.stack([ratio[:, 1], ratio[:, 0]] * 2, axis=-1)[:, None, :]
  if not clip:
    return boxes * scale
  # The ratio can round up by an ulp (XLA:GPU's division is not correctly
  # rounded): clip again so no box leaves the original image.
  orig_hi = jnp.stack([orig_hw[:, 1], orig_hw[:, 0]] * 2, axis=-1)[:, None, :]
  return jnp.clip(boxes * scale, 0.0, orig_hi)


def candidates(outputs, locations: Locations, image_hw, cfg: ModelConfig):
  """The candidates of every level before NMS (steps 1-2), in the resized
  image's pixels (clipped to it): what test-time augmentation merges over
  passes (the official FCOS with BBOX_AUG skips the per-pass NMS the same
  way; fcos_jax/core/tta.py).

  Returns boxes [B, N, 4] float32, scores [B, N], classes [B, N] int32,
  valid [B, N] bool (invalid slots: zero boxes and scores); N = the sum of
  the per-level top-k, fixed by the canvas."""
  _check_inputs(outputs, locations, image_hw, image_hw, cfg)
  boxes, scores, classes, valid, _ = _clipped_candidates(
      outputs, locations, image_hw, cfg)
  return {"boxes": jnp.where(valid[..., None], boxes, 0.0),
          "scores": jnp.where(valid, scores, 0.0),
          "classes": jnp.where(valid, classes, 0), "valid": valid}


def postprocess(outputs, locations: Locations, image_hw, orig_hw,
                cfg: ModelConfig, with_locations: bool = False):
  """Head outputs -> at most K = cfg.inference.max_detections detections per image.

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
    valid   [B, K] bool; unused slots hold zeros;
    and with `with_locations`, locations [B, K] int32: the index in P of
    the location each detection came from (-1 in unused slots).
  Static shapes; jit it with `locations` and `cfg` closed over (see
  `make_postprocess_fn`).
  """
  _check_inputs(outputs, locations, image_hw, orig_hw, cfg)
  boxes, scores, classes, valid, loc = _clipped_candidates(
      outputs, locations, image_hw, cfg)

  nms = functools.partial(batched_nms, iou_threshold=float(cfg.inference.nms_iou),
                          max_output=int(cfg.inference.max_detections))
  keep, keep_valid = jax.vmap(nms)(boxes, scores, classes, valid)

  boxes = jnp.take_along_axis(boxes, keep[..., None], axis=1)
  scores = jnp.take_along_axis(scores, keep, axis=1)
  classes = jnp.take_along_axis(classes, keep, axis=1)
  boxes = to_original_pixels(boxes, image_hw, orig_hw,
                             cfg.inference.clip_boxes)
  dets = {
      "boxes": jnp.where(keep_valid[..., None], boxes, 0.0),
      "scores": jnp.where(keep_valid, scores, 0.0),
      "classes": jnp.where(keep_valid, classes, 0),
      "valid": keep_valid,
  }
  if with_locations:
    dets["locations"] = jnp.where(
        keep_valid, jnp.take_along_axis(loc, keep, axis=1), -1)
  return dets


def make_postprocess_fn(locations: Locations, cfg: ModelConfig):
  """jit(postprocess) for one canvas: fn(outputs, image_hw, orig_hw) -> dict."""
  def fn(outputs, image_hw, orig_hw):
    return postprocess(outputs, locations, image_hw, orig_hw, cfg)
  return jax.jit(fn)
