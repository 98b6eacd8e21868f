"""TOOD's Task Alignment Learning assignment (Feng et al., ICCV 2021), as
mmdetection's TaskAlignedAssigner and TOODHead._get_target_single state
it, over the dense, fixed-shape FCOS layout.

Given the model's own (detached) predictions at every location i, the
score s_i (probabilities [P, C]) and the decoded box b_i (pixels), for
every ground-truth box g of class c_g:

1. u_ig = IoU(b_i, g) (mmdetection's bbox_overlaps, eps 1e-6), alignment
   t_ig = s_i[c_g]^alpha * u_ig^beta (TOOD: alpha 1, beta 6).
2. Candidates: the k = min(topk, P) locations of largest t_ig over all
   levels together (TOOD: 13).
3. Positive: a candidate with t_ig > 0 whose point lies inside g
   (min(l*, t*, r*, b*) > 0.01).
4. A location positive for several boxes takes the one of highest u_ig
   (the lowest box index among equal IoUs, as torch's max).
5. The target of positive i assigned to g: t_ig / (max_j t_jg + 1e-7) *
   max_j u_jg, max over g's positives j (after step 4).

Padded and crowd boxes are never candidates. Fixed shapes, no host loops:
per image (vmapped), the [M, P] alignment matrix, `jax.lax.top_k` over P,
scatter-max over the M x k candidate pairs for step 4 and over boxes for
step 5.

`assign_tood` adds TOOD's warm-up (mmdetection's initial_epoch): while
step < cfg.assign.initial_steps the targets are ATSS's (core/atss.py,
initial_topk, anchor_scale) with alignment 1 on its positives, and
`Targets.initial` tells the loss to be the focal one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.core import atss
from fcos_jax.core import targets as targets_lib
from fcos_jax.core.box_coding import decode_boxes
from fcos_jax.core.locations import Locations
from fcos_jax.core.targets import Targets
from fcos_jax.model.config import ModelConfig

# mmdetection: the positive's point must be this far inside the box.
INSIDE_MARGIN = 0.01
# bbox_overlaps' eps on the union; the normalisation's eps (10e-8).
IOU_EPS = 1e-6
NORM_EPS = 1e-7


def pairwise_iou(pred, gt):
  """IoU [M, P] of boxes gt [M, 4] with pred [P, 4] (x0, y0, x1, y1), as
  mmdetection's bbox_overlaps (union clamped to >= 1e-6)."""
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  lt = jnp.maximum(gt[:, None, :2], pred[None, :, :2])
  rb = jnp.minimum(gt[:, None, 2:], pred[None, :, 2:])
  wh = jnp.clip(rb - lt, 0.0)
  inter = wh[..., 0] * wh[..., 1]
  union = jnp.maximum(area(gt)[:, None] + area(pred)[None] - inter, IOU_EPS)
  return inter / union


def _pow(x, e: float):
  return jax.lax.integer_pow(x, int(e)) if float(e).is_integer() else x ** e


def _assign_one(boxes, classes, usable, scores, pred_boxes, points, topk,
                alpha, beta):
  """One image: boxes [M, 4], classes [M], usable [M], scores [P, C]
  probabilities, pred_boxes [P, 4] pixels -> (`Targets` of [P], alignment
  [P])."""
  num_boxes, num_points = boxes.shape[0], points.shape[0]
  iou = pairwise_iou(pred_boxes, boxes)                             # [M, P]
  s = jnp.take(scores, classes, axis=1).T                           # [M, P]
  metric = _pow(s, alpha) * _pow(iou, beta)
  k = min(topk, num_points)
  cand_metric, cand = jax.lax.top_k(metric, k)                      # [M, k]
  p = points[cand]                                                  # [M, k, 2]
  ltrb = jnp.concatenate([p - boxes[:, None, :2], boxes[:, None, 2:] - p], -1)
  positive = ((cand_metric > 0) & (jnp.min(ltrb, -1) > INSIDE_MARGIN)
              & usable[:, None])                                    # [M, k]
  cand_iou = jnp.take_along_axis(iou, cand, axis=1)
  # Ambiguity: the highest IoU wins, then the lowest box index.
  flat = cand.reshape(-1)
  score = jnp.where(positive, cand_iou, -jnp.inf).reshape(-1)
  best = jnp.full((num_points,), -jnp.inf).at[flat].max(score)
  box_id = jnp.broadcast_to(jnp.arange(num_boxes)[:, None], cand.shape)
  wins = positive.reshape(-1) & (score == best[flat])
  first = jnp.full((num_points,), num_boxes, jnp.int32).at[flat].min(
      jnp.where(wins, box_id.reshape(-1), num_boxes).astype(jnp.int32))
  is_pos = first < num_boxes
  index = jnp.minimum(first, num_boxes - 1)

  # Normalisation per box over its positives (after the ambiguity).
  loc = jnp.arange(num_points)
  t = jnp.where(is_pos, metric[index, loc], 0.0)
  u = jnp.where(is_pos, iou[index, loc], 0.0)
  seg = jnp.where(is_pos, index, num_boxes)  # Background to a spare slot.
  t_max = jnp.zeros((num_boxes + 1,)).at[seg].max(t)
  u_max = jnp.zeros((num_boxes + 1,)).at[seg].max(u)
  alignment = jnp.where(is_pos, t / (t_max[seg] + NORM_EPS) * u_max[seg], 0.0)
  tgt = targets_lib.targets_of_match(points, boxes, classes, index, is_pos)
  return tgt, alignment


def assign_tal(boxes, classes, box_valid, is_crowd, locations: Locations,
               cfg: ModelConfig, scores, box_regression) -> Targets:
  """TAL targets of every location (module docstring, steps 1-5).

  boxes [B, M, 4], classes, box_valid, is_crowd [B, M] as `assign_targets`;
  scores [B, P, C] the predicted probabilities and box_regression [B, P,
  4] the predicted (l, t, r, b) distances in pixels (both detached here).
  Reads cfg.assign.topk, alpha, beta and cfg.class_agnostic. Returns
  `Targets` with `alignment` (the normalised metric) and `initial` False.
  """
  atss._check_inputs(boxes, classes, box_valid, is_crowd, locations, cfg)
  boxes = jnp.asarray(boxes, jnp.float32)
  usable = jnp.asarray(box_valid, bool) & ~jnp.asarray(is_crowd, bool)
  classes = jnp.asarray(classes, jnp.int32)
  if cfg.class_agnostic:
    classes = jnp.zeros_like(classes)
  points = jnp.asarray(np.asarray(locations.points, np.float32))
  scores = jax.lax.stop_gradient(jnp.asarray(scores, jnp.float32))
  pred = jax.lax.stop_gradient(decode_boxes(
      points, jnp.asarray(box_regression, jnp.float32)))
  a = cfg.assign
  tgt, alignment = jax.vmap(lambda b, c, u, s, q: _assign_one(
      b, c, u, s, q, points, a.topk, a.alpha, a.beta))(
          boxes, classes, usable, scores, pred)
  return tgt._replace(alignment=alignment,
                      initial=jnp.zeros(boxes.shape[:1], bool))


def assign_initial(boxes, classes, box_valid, is_crowd, locations: Locations,
                   cfg: ModelConfig) -> Targets:
  """TOOD's warm-up targets: ATSS (cfg.assign.initial_topk, anchor_scale),
  alignment 1 on its positives (mmdetection's bbox_weights), `initial`
  True."""
  tgt = atss.assign_atss(boxes, classes, box_valid, is_crowd, locations, cfg,
                         topk=cfg.assign.initial_topk,
                         anchor_scale=cfg.assign.anchor_scale)
  return tgt._replace(alignment=tgt.positive.astype(jnp.float32),
                      initial=jnp.ones(tgt.positive.shape[:1], bool))


def assign_tood(boxes, classes, box_valid, is_crowd, locations: Locations,
                cfg: ModelConfig, outputs=None, step=None) -> Targets:
  """TOOD's assignment at training step `step`: the warm-up's ATSS while
  step < cfg.assign.initial_steps, TAL on `outputs` (HeadOutputs of the
  T-head: sigmoid(cls_logits) is the score) after. Without outputs (the
  analyses, which have no predictions) the warm-up's ATSS."""
  initial = assign_initial(boxes, classes, box_valid, is_crowd, locations,
                           cfg)
  if outputs is None:
    return initial
  tal = assign_tal(boxes, classes, box_valid, is_crowd, locations, cfg,
                   jax.nn.sigmoid(outputs.cls_logits.astype(jnp.float32)),
                   outputs.box_regression)
  if cfg.assign.initial_steps <= 0:
    return tal
  if step is None:
    raise ValueError("assign_tood: step is None but cfg.assign.initial_steps"
                     f"={cfg.assign.initial_steps}; pass the training step.")
  warm = jnp.asarray(step) < cfg.assign.initial_steps
  return jax.tree.map(lambda a, b: jnp.where(warm, a, b), initial, tal)
