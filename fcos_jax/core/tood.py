"""TOOD's loss (Feng et al., ICCV 2021) over the dense, fixed-shape FCOS
layout, as mmdetection's TOODHead.loss / loss_single state it.

The T-head (`fcos_jax/model/tood_head.py`, quality "tood") gives the logit
x of its score p = sigmoid(x) = sqrt(sigmoid(cls) * sigmoid(prob)) and a
box (l, t, r, b) in pixels, possibly negative (resampled). The targets are
TAL's (`core/tal.py`): `alignment` a_i, the normalised alignment metric of
positive i (1 on the warm-up's ATSS positives), `initial` the warm-up.

After the warm-up:
  loss_cls = sum over all locations and classes of QFL(x, y)
             / max(sum_i a_i, 1), y = a_i at positive i's class, 0
             elsewhere; QFL(x, y) = BCE(p, y) |y - p|^beta (mmdetection's
             QualityFocalLoss with activated=True: BCE on the probability,
             here from the logit, the same values);
  loss_reg = giou_weight * sum_i a_i (1 - GIoU_i) / max(sum_i a_i, 1).
During the warm-up (step < assign.initial_steps):
  loss_cls = sum of the sigmoid focal loss (alpha, gamma; mmdetection's
             FocalLoss with activated=True) / max(num_pos, 1);
  loss_reg = giou_weight * sum_i c_i (1 - GIoU_i) / max(sum_i c_i, 1),
             c_i the centre-ness target (ATSSHead.centerness_target).

GIoU is mmdetection's bbox_overlaps (aligned, eps 1e-6) of the boxes in
stride units, the intersection clamped at 0 (a resampled box may miss its
point). Sums run over the whole global batch (see `losses.py`), as
mmdetection's reduce_mean over GPUs makes the normalisers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fcos_jax.core.gfl import quality_focal_loss
from fcos_jax.core.locations import Locations
from fcos_jax.core.losses import sigmoid_focal_loss
from fcos_jax.core.targets import Targets
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.outputs import as_head_outputs

__all__ = ["giou_ltrb", "tood_loss"]

_EPS = 1e-6  # bbox_overlaps' eps.


def giou_ltrb(pred, target):
  """GIoU of two boxes given as (l, t, r, b) distances from one point (any
  sign; each box of positive width), as mmdetection's aligned
  bbox_overlaps (eps 1e-6): [..., 4] -> [...]."""
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  pl, pt, pr, pb = (pred[..., k] for k in range(4))
  tl, tt, tr, tb = (target[..., k] for k in range(4))
  iw = jnp.clip(jnp.minimum(pr, tr) + jnp.minimum(pl, tl), 0.0)
  ih = jnp.clip(jnp.minimum(pb, tb) + jnp.minimum(pt, tt), 0.0)
  inter = iw * ih
  union = jnp.maximum((pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter,
                      _EPS)
  ew = jnp.clip(jnp.maximum(pr, tr) + jnp.maximum(pl, tl), 0.0)
  eh = jnp.clip(jnp.maximum(pb, tb) + jnp.maximum(pt, tt), 0.0)
  enclose = jnp.maximum(ew * eh, _EPS)
  return inter / union - (enclose - union) / enclose


def tood_loss(outputs, targets: Targets, locations: Locations,
              cfg: ModelConfig):
  """The TOOD training loss of a batch (module docstring).

  outputs: HeadOutputs of the T-head; targets: TAL's `Targets` (alignment
  and initial set; core/tal.py); cfg.loss: TOODLoss. Returns (total,
  metrics) with loss_cls, loss_reg, num_pos and initial (1 during the
  warm-up).
  """
  outputs = as_head_outputs(outputs, "tood_loss")
  b, p = targets.positive.shape
  outputs.check(p, cfg.num_classes, "tood_loss", batch=b)
  if targets.alignment is None or targets.initial is None:
    raise ValueError("tood_loss: targets.alignment / initial are None; the "
                     "loss 'tood' needs the assigner 'tal' (core/tal.py).")
  lc = cfg.loss
  positive = targets.positive
  initial = jnp.any(targets.initial)
  align = jax.lax.stop_gradient(
      jnp.where(positive, targets.alignment.astype(jnp.float32), 0.0))
  num_pos_raw = jnp.sum(positive.astype(jnp.float32))
  cls_avg = jnp.maximum(jnp.sum(align), 1.0)

  # All locations as negatives, then each positive's class swapped to its
  # target: the dense sum without building the [B, P, C] target.
  logits = outputs.cls_logits.astype(jnp.float32)                  # [B, P, C]
  x_true = jnp.take_along_axis(
      logits, targets.labels[..., None], axis=-1)[..., 0]          # [B, P]

  def qfl():
    neg = jnp.sum(jnp.sum(sigmoid_focal_loss(logits, 0.0, alpha=-1.0,
                                             gamma=lc.qfl_beta), axis=-1))
    swap = (quality_focal_loss(x_true, align, lc.qfl_beta)
            - sigmoid_focal_loss(x_true, 0.0, alpha=-1.0, gamma=lc.qfl_beta))
    return neg + jnp.sum(jnp.where(positive, swap, 0.0))

  def focal():
    a, g = lc.focal_alpha, lc.focal_gamma
    neg = jnp.sum(jnp.sum(sigmoid_focal_loss(logits, 0.0, a, g), axis=-1))
    swap = (sigmoid_focal_loss(x_true, 1.0, a, g)
            - sigmoid_focal_loss(x_true, 0.0, a, g))
    return neg + jnp.sum(jnp.where(positive, swap, 0.0))

  if cfg.assign.name == "tal" and cfg.assign.initial_steps <= 0:
    cls_sum = qfl()  # No warm-up: one loss only in the graph.
  else:
    cls_sum = jax.lax.cond(initial, focal, qfl)  # One dense loss a step.
  loss_cls = cls_sum / cls_avg

  mask4 = positive[..., None]
  strides = jnp.asarray(locations.strides, jnp.float32)[:, None]   # [P, 1]
  pred = jnp.where(mask4, outputs.box_regression.astype(jnp.float32), 1.0)
  target = jnp.where(mask4, targets.reg_targets.astype(jnp.float32), 1.0)
  giou = giou_ltrb(pred / strides, target / strides)               # [B, P]
  weight = jnp.where(initial, targets.centerness.astype(jnp.float32), align)
  weight = jax.lax.stop_gradient(jnp.where(positive, weight, 0.0))
  reg_avg = jnp.maximum(jnp.sum(weight), 1.0)
  loss_reg = lc.giou_weight * jnp.sum(
      jnp.where(positive, (1.0 - giou) * weight, 0.0)) / reg_avg

  total = loss_cls + loss_reg
  return total, {"loss_cls": loss_cls, "loss_reg": loss_reg,
                 "num_pos": num_pos_raw,
                 "initial": initial.astype(jnp.float32)}
