"""ATSS assignment (Zhang et al. 2020, "Bridging the Gap Between Anchor-based
and Anchor-free Detection via Adaptive Training Sample Selection").

The rule of sfzhang15/ATSS `ATSSLossComputation.prepare_targets`
(POSITIVE_TYPE 'ATSS'), stated for FCOS's locations. Each location carries
one square anchor of side `anchor_scale` x its stride centred on it. For
every ground-truth box g:

1. Candidates: on each level, the k = min(topk, locations of the level)
   locations nearest to g's centre (Euclidean distance between the
   location and ((x0 + x1) / 2, (y0 + y1) / 2)); ties go to the lower
   location index.
2. Threshold: t_g = mean + std of the candidates' anchor IoUs with g (all
   levels together; std unbiased, as torch.std).
3. Positive: a candidate whose IoU >= t_g and whose point lies inside g
   (min(l*, t*, r*, b*) > 0.01).
4. A location positive for several boxes takes the one of highest IoU (the
   lowest box index among equal IoUs, as torch's max).

Padded and crowd boxes are never candidates (maskrcnn-benchmark's COCO
dataset drops crowd boxes). Differences from the reference: anchors are
centred on the model's locations and boxes use the continuous convention
(the reference's anchors and IoU use the +1 pixel convention).

Fixed shapes, no host loops: per image (vmapped), the distances are
[M, P_l] per level, `jax.lax.top_k` picks the candidates, and the
ambiguity is resolved with scatter-max over the M x K candidate pairs
(K = sum of the per-level k), so no [P, M] IoU matrix is built.
Returns the same `Targets` as `core/targets.py`: the loss is unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.core.locations import Locations
from fcos_jax.core import targets as targets_lib
from fcos_jax.core.targets import Targets
from fcos_jax.model.config import ModelConfig

# A candidate's point must be this far inside the box (the reference's 0.01).
INSIDE_MARGIN = 0.01


def _check_inputs(boxes, classes, box_valid, is_crowd, locations, cfg):
  if not isinstance(locations, Locations):
    raise TypeError(
        "assign_atss: locations must be a fcos_jax.core.locations.Locations "
        f"(compute_locations(canvas_hw, cfg)), got {type(locations).__name__}.")
  if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[1] == 0:
    raise ValueError(
        f"assign_atss: boxes must be [B, M, 4] with M >= 1 (pad with "
        f"box_valid False), got shape {tuple(boxes.shape)}.")
  for name, value in (("classes", classes), ("box_valid", box_valid),
                      ("is_crowd", is_crowd)):
    if tuple(value.shape) != tuple(boxes.shape[:2]):
      raise ValueError(
          f"assign_atss: {name} must be [B, M] = {tuple(boxes.shape[:2])} "
          f"like boxes, got shape {tuple(value.shape)}.")
  if len(locations.level_sizes) != cfg.num_levels:
    raise ValueError(
        f"assign_atss: locations have {len(locations.level_sizes)} levels "
        f"but cfg has {cfg.num_levels}; build them with the same cfg.")


def _box_iou(anchors, boxes):
  """IoU of [..., 4] boxes with [..., 4] boxes (x0, y0, x1, y1), paired."""
  ix = jnp.clip(jnp.minimum(anchors[..., 2], boxes[..., 2])
                - jnp.maximum(anchors[..., 0], boxes[..., 0]), 0.0)
  iy = jnp.clip(jnp.minimum(anchors[..., 3], boxes[..., 3])
                - jnp.maximum(anchors[..., 1], boxes[..., 1]), 0.0)
  inter = ix * iy
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  union = area(anchors) + area(boxes) - inter
  return inter / jnp.maximum(union, 1e-12)


def _level_candidates(locations: Locations, topk: int):
  """Static per-level (start, points [N, 2], stride, k)."""
  out = []
  for level in range(len(locations.level_sizes)):
    sl = locations.level_slice(level)
    pts = np.asarray(locations.points[sl], np.float32)
    out.append((sl.start, pts, float(locations.strides[sl][0]),
                min(topk, pts.shape[0])))
  return out


def _assign_one(boxes, classes, usable, levels, all_points, anchor_scale):
  """One image: boxes [M, 4], classes [M], usable [M] -> `Targets` of [P]."""
  num_boxes = boxes.shape[0]
  num_points = all_points.shape[0]
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2                       # [M, 2]
  cand_index, cand_iou = [], []
  for start, pts, stride, k in levels:  # Static loop over levels.
    d2 = jnp.sum((jnp.asarray(pts)[None] - centre[:, None]) ** 2, -1)  # [M, N]
    _, idx = jax.lax.top_k(-jnp.sqrt(d2), k)                          # [M, k]
    p = jnp.asarray(pts)[idx]                                         # [M, k, 2]
    half = anchor_scale * stride / 2
    anchors = jnp.concatenate([p - half, p + half], -1)               # [M, k, 4]
    cand_iou.append(_box_iou(anchors, boxes[:, None, :]))
    cand_index.append(idx + start)
  cand_index = jnp.concatenate(cand_index, 1)                         # [M, K]
  cand_iou = jnp.concatenate(cand_iou, 1)                             # [M, K]
  thresh = (jnp.mean(cand_iou, 1, keepdims=True)
            + jnp.std(cand_iou, 1, keepdims=True, ddof=1))
  p = jnp.asarray(all_points)[cand_index]                             # [M, K, 2]
  ltrb = jnp.concatenate([p - boxes[:, None, :2], boxes[:, None, 2:] - p], -1)
  positive = ((cand_iou >= thresh) & (jnp.min(ltrb, -1) > INSIDE_MARGIN)
              & usable[:, None])                                      # [M, K]
  # Ambiguity: the highest IoU wins, then the lowest box index.
  flat_index = cand_index.reshape(-1)
  score = jnp.where(positive, cand_iou, -jnp.inf).reshape(-1)
  best = jnp.full((num_points,), -jnp.inf).at[flat_index].max(score)
  box_id = jnp.broadcast_to(jnp.arange(num_boxes)[:, None], cand_index.shape)
  wins = positive.reshape(-1) & (score == best[flat_index])
  first = jnp.full((num_points,), num_boxes, jnp.int32).at[flat_index].min(
      jnp.where(wins, box_id.reshape(-1), num_boxes).astype(jnp.int32))

  is_pos = first < num_boxes
  index = jnp.minimum(first, num_boxes - 1)
  return targets_lib.targets_of_match(all_points, boxes, classes, index,
                                      is_pos)


def assign_atss(boxes, classes, box_valid, is_crowd, locations: Locations,
                cfg: ModelConfig, topk: int | None = None,
                anchor_scale: float | None = None) -> Targets:
  """ATSS targets of every location; the arguments and result of
  `targets.assign_targets`. Reads cfg.assign.topk, cfg.assign.anchor_scale
  (unless given: TOOD's warm-up passes its own) and cfg.class_agnostic."""
  _check_inputs(boxes, classes, box_valid, is_crowd, locations, cfg)
  boxes = jnp.asarray(boxes, jnp.float32)
  usable = jnp.asarray(box_valid, bool) & ~jnp.asarray(is_crowd, bool)
  classes = jnp.asarray(classes, jnp.int32)
  if cfg.class_agnostic:
    classes = jnp.zeros_like(classes)
  topk = cfg.assign.topk if topk is None else topk
  levels = _level_candidates(locations, topk)
  points = np.asarray(locations.points, np.float32)
  scale = float(cfg.assign.anchor_scale if anchor_scale is None
                else anchor_scale)
  return jax.vmap(lambda b, c, u: _assign_one(b, c, u, levels, points, scale))(
      boxes, classes, usable)
