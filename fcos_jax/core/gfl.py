"""GFL (Generalized Focal Loss, Li et al. 2020): its losses over the dense,
fixed-shape FCOS layout.

The head (`fcos_jax/model/head.py`, quality "gfl_joint") gives class logits
whose sigmoid is the joint class-and-quality score, and for each side
(l, t, r, b) logits of a distribution over {0, ..., reg_max} strides whose
expectation (`integral`) is the distance. The loss (loss "gfl"), as
mmdetection's GFLHead.loss_single states it (docs/algorithm.md, "GFL"):

  IoU_i   = IoU(decoded box, target box) of positive i, no gradient;
  w_i     = max over classes of sigmoid(cls_i), no gradient;
  loss_cls = sum over all locations and classes of QFL(cls, label, IoU)
             / max(num_pos, 1);
  loss_reg = giou_weight * sum_i w_i (1 - GIoU_i) / max(sum_i w_i, 1);
  loss_dfl = dfl_weight * sum_i w_i (sum over 4 sides DFL) / 4
             / max(sum_i w_i, 1).

QFL(x, y) = BCE(x, y) |y - sigmoid(x)|^beta, with y = IoU at a positive's
class and y = 0 elsewhere. DFL of a target y in [0, reg_max - 0.1] (the
target distance in strides, clamped as mmdetection's bbox2distance):
(ceil - y) CE(logits, floor(y)) + (y - floor) CE(logits, floor(y) + 1),
floor = floor(y), ceil = floor + 1.

Sums run over the whole global batch (see `losses.py`): the normalisers are
global. Background lanes get harmless stand-in values before any division,
as in `losses.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fcos_jax.core.losses import sigmoid_focal_loss
from fcos_jax.core.locations import Locations
from fcos_jax.core.targets import Targets
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.head import integral  # The decoding; a layer of the head.
from fcos_jax.model.outputs import as_head_outputs

__all__ = ["integral", "quality_focal_loss", "distribution_focal_loss",
           "iou_and_giou", "gfl_loss"]

# mmdetection's bbox_overlaps eps (IoU and GIoU denominators).
_EPS = 1e-6
# bbox2distance's margin: targets stay below reg_max, so floor + 1 <= reg_max.
DFL_TARGET_MARGIN = 0.1


def _softplus(x):
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def quality_focal_loss(logits, score, beta: float = 2.0):
  """Elementwise QFL: BCE(x, score) * |score - sigmoid(x)|^beta, [...].

  score: soft targets in [0, 1] (the IoU at a positive's class, 0
  elsewhere), broadcastable to logits."""
  x = jnp.asarray(logits, jnp.float32)
  y = jnp.asarray(score, jnp.float32)
  bce = (1.0 - y) * _softplus(x) + y * _softplus(-x)
  d = jnp.abs(y - jax.nn.sigmoid(x))
  mod = jax.lax.integer_pow(d, int(beta)) if float(beta).is_integer() \
      else d ** beta
  return bce * mod


def distribution_focal_loss(logits, target):
  """Elementwise DFL: logits [..., n + 1], target [...] in [0, n) (float,
  distances in bins) -> [...]."""
  logits = jnp.asarray(logits, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  left = jnp.floor(target)
  w_left = left + 1.0 - target
  w_right = target - left
  left_i = left.astype(jnp.int32)[..., None]
  lse = jax.nn.logsumexp(logits, axis=-1)
  ce_left = lse - jnp.take_along_axis(logits, left_i, axis=-1)[..., 0]
  ce_right = lse - jnp.take_along_axis(logits, left_i + 1, axis=-1)[..., 0]
  return ce_left * w_left + ce_right * w_right


def iou_and_giou(pred, target):
  """IoU and GIoU of two boxes around one point, as mmdetection's
  bbox_overlaps (eps 1e-6): pred, target [..., 4] (l, t, r, b) >= 0."""
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  pl, pt, pr, pb = (pred[..., k] for k in range(4))
  tl, tt, tr, tb = (target[..., k] for k in range(4))
  inter = ((jnp.minimum(pl, tl) + jnp.minimum(pr, tr))
           * (jnp.minimum(pt, tt) + jnp.minimum(pb, tb)))
  union = jnp.maximum((pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter,
                      _EPS)
  enclose = jnp.maximum((jnp.maximum(pl, tl) + jnp.maximum(pr, tr))
                        * (jnp.maximum(pt, tt) + jnp.maximum(pb, tb)), _EPS)
  iou = inter / union
  return iou, iou - (enclose - union) / enclose


def gfl_loss(outputs, targets: Targets, locations: Locations,
             cfg: ModelConfig):
  """The GFL training loss of a batch (module docstring).

  outputs: HeadOutputs with box_distribution [B, P, 4, reg_max + 1];
  targets: any assigner's `Targets` (labels, positive, reg_targets in
  pixels); cfg.loss: GFLLoss. Returns (total, metrics) with loss_cls,
  loss_reg (GIoU), loss_dfl and num_pos.
  """
  outputs = as_head_outputs(outputs, "gfl_loss")
  b, p = targets.positive.shape
  outputs.check(p, cfg.num_classes, "gfl_loss", batch=b)
  if outputs.box_distribution is None:
    raise ValueError("gfl_loss: outputs.box_distribution is None; the loss "
                     "'gfl' needs the quality 'gfl_joint' head.")
  n = cfg.quality.reg_max
  positive = targets.positive
  num_pos_raw = jnp.sum(positive.astype(jnp.float32))
  num_pos = jnp.maximum(num_pos_raw, 1.0)
  mask4 = positive[..., None]

  # Boxes in strides, as mmdetection decodes and encodes them.
  strides = jnp.asarray(locations.strides, jnp.float32)[:, None]   # [P, 1]
  pred = jnp.where(mask4, outputs.box_regression.astype(jnp.float32), 1.0)
  target = jnp.where(mask4, targets.reg_targets.astype(jnp.float32) / strides,
                     1.0)                                          # [B, P, 4]
  iou, giou = iou_and_giou(pred, target)
  score = jax.lax.stop_gradient(jnp.where(positive, iou, 0.0))     # [B, P]

  logits = outputs.cls_logits.astype(jnp.float32)                  # [B, P, C]
  beta = cfg.loss.qfl_beta
  # All locations as negatives (target 0: BCE(x, 0) sigmoid(x)^beta), then
  # the positive class of each positive swapped to its IoU target.
  all_negative = jnp.sum(jnp.sum(
      sigmoid_focal_loss(logits, 0.0, alpha=-1.0, gamma=beta), axis=-1))
  x_true = jnp.take_along_axis(
      logits, targets.labels[..., None], axis=-1)[..., 0]          # [B, P]
  swap = (quality_focal_loss(x_true, score, beta)
          - sigmoid_focal_loss(x_true, 0.0, alpha=-1.0, gamma=beta))
  loss_cls = (all_negative + jnp.sum(jnp.where(positive, swap, 0.0))) / num_pos

  weight = jax.lax.stop_gradient(
      jnp.where(positive, jax.nn.sigmoid(logits).max(-1), 0.0))    # [B, P]
  avg = jnp.maximum(jnp.sum(weight), 1.0)
  loss_reg = cfg.loss.giou_weight * jnp.sum(
      jnp.where(positive, (1.0 - giou) * weight, 0.0)) / avg
  corners = jnp.clip(target, 0.0, n - DFL_TARGET_MARGIN)           # [B, P, 4]
  dfl = distribution_focal_loss(outputs.box_distribution, corners).sum(-1)
  loss_dfl = cfg.loss.dfl_weight * jnp.sum(
      jnp.where(positive, dfl * weight, 0.0)) / 4.0 / avg

  total = loss_cls + loss_reg + loss_dfl
  return total, {"loss_cls": loss_cls, "loss_reg": loss_reg,
                 "loss_dfl": loss_dfl, "num_pos": num_pos_raw}
