"""VarifocalNet (Zhang et al., CVPR 2021): Varifocal Loss and VFNet's loss
over the dense, fixed-shape FCOS layout.

The head (`fcos_jax/model/vfnet_head.py`, quality "vfnet") gives IoU-aware
class logits, an initial box (`box_initial`) and a refined box
(`box_regression`), both (l, t, r, b) in pixels. The loss (loss "vfnet"),
as mmdetection's VFNetHead.loss_by_feat states it (docs/algorithm.md,
"VFNet"), for positives i of any assigner (ATSS in the preset):

  q_i^init = IoU(initial_i, target_i), q_i = IoU(refined_i, target_i),
             both clamped to >= 1e-6, no gradient;
  loss_cls = sum over all locations and classes of VFL(cls, y)
             / max(num_pos, 1), y = q_i at positive i's class, 0 elsewhere;
  loss_reg = giou_weight * sum_i q_i^init (1 - GIoU(initial_i, target_i))
             / max(sum_i q_i^init, 1);
  loss_reg_refine = giou_refine_weight * sum_i q_i (1 - GIoU(refined_i,
             target_i)) / max(sum_i q_i, 1).

VFL(x, y) = BCE(x, y) * (y if y > 0 else alpha |sigmoid(x) - y|^gamma)
(iou_weighted; otherwise 1 for y > 0): positives are weighted by their
target, negatives focal-down-weighted.

Sums run over the whole global batch (see `losses.py`), so the normalisers
are global, as mmdetection's reduce_mean over GPUs makes them. Background
lanes get harmless stand-in boxes before any division.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fcos_jax.core.gfl import iou_and_giou
from fcos_jax.core.locations import Locations
from fcos_jax.core.losses import sigmoid_focal_loss
from fcos_jax.core.targets import Targets
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.outputs import as_head_outputs

__all__ = ["varifocal_loss", "vfnet_loss", "IOU_FLOOR"]

# mmdetection clamps the IoU targets and weights to at least this.
IOU_FLOOR = 1e-6


def _bce_with_logits(x, y):
  log1p_e = jnp.log1p(jnp.exp(-jnp.abs(x)))
  return ((1.0 - y) * (jnp.maximum(x, 0.0) + log1p_e)
          + y * (jnp.maximum(-x, 0.0) + log1p_e))


def varifocal_loss(logits, targets, alpha: float = 0.75, gamma: float = 2.0,
                   iou_weighted: bool = True):
  """Elementwise Varifocal Loss (mmdetection `varifocal_loss`, not
  reduced): logits [...], targets [...] in [0, 1] (the IoU at a positive's
  class, 0 elsewhere) -> [...] float32."""
  x = jnp.asarray(logits, jnp.float32)
  y = jnp.asarray(targets, jnp.float32)
  d = jnp.abs(jax.nn.sigmoid(x) - y)
  mod = (jax.lax.integer_pow(d, int(gamma)) if float(gamma).is_integer()
         else d ** gamma)
  positive_weight = y if iou_weighted else 1.0
  weight = jnp.where(y > 0.0, positive_weight, alpha * mod)
  return _bce_with_logits(x, y) * weight


def vfnet_loss(outputs, targets: Targets, locations: Locations,
               cfg: ModelConfig):
  """The VFNet training loss of a batch (module docstring).

  outputs: HeadOutputs of the VFNet head (box_initial set); targets: any
  assigner's `Targets` (labels, positive, reg_targets in pixels);
  cfg.loss: VFNetLoss. Returns (total, metrics) with loss_cls, loss_reg
  (initial box), loss_reg_refine and num_pos.
  """
  del locations  # Boxes are in pixels: no strides needed.
  outputs = as_head_outputs(outputs, "vfnet_loss")
  b, p = targets.positive.shape
  outputs.check(p, cfg.num_classes, "vfnet_loss", batch=b)
  if outputs.box_initial is None:
    raise ValueError("vfnet_loss: outputs.box_initial is None; the loss "
                     "'vfnet' needs the quality 'vfnet' head.")
  lc = cfg.loss
  positive = targets.positive
  num_pos_raw = jnp.sum(positive.astype(jnp.float32))
  num_pos = jnp.maximum(num_pos_raw, 1.0)
  mask4 = positive[..., None]

  target = jnp.where(mask4, targets.reg_targets.astype(jnp.float32), 1.0)

  def box_term(pred, weight_scale):
    pred = jnp.where(mask4, pred.astype(jnp.float32), 1.0)
    iou, giou = iou_and_giou(pred, target)
    q = jax.lax.stop_gradient(
        jnp.where(positive, jnp.maximum(iou, IOU_FLOOR), 0.0))     # [B, P]
    avg = jnp.maximum(jnp.sum(q), 1.0)
    loss = weight_scale * jnp.sum(jnp.where(positive, (1.0 - giou) * q,
                                            0.0)) / avg
    return loss, q

  loss_reg, _ = box_term(outputs.box_initial, lc.giou_weight)
  loss_reg_refine, q = box_term(outputs.box_regression,
                                lc.giou_refine_weight)

  # All locations as negatives (target 0: alpha BCE(x, 0) sigmoid(x)^gamma),
  # then each positive's class swapped to its IoU target: the dense sum
  # without building the [B, P, C] target.
  logits = outputs.cls_logits.astype(jnp.float32)                  # [B, P, C]
  all_negative = lc.vfl_alpha * jnp.sum(jnp.sum(
      sigmoid_focal_loss(logits, 0.0, alpha=-1.0, gamma=lc.vfl_gamma),
      axis=-1))
  x_true = jnp.take_along_axis(
      logits, targets.labels[..., None], axis=-1)[..., 0]          # [B, P]
  swap = (varifocal_loss(x_true, q, lc.vfl_alpha, lc.vfl_gamma,
                         lc.iou_weighted)
          - lc.vfl_alpha * sigmoid_focal_loss(x_true, 0.0, alpha=-1.0,
                                              gamma=lc.vfl_gamma))
  loss_cls = (all_negative + jnp.sum(jnp.where(positive, swap, 0.0))) / num_pos

  total = loss_cls + loss_reg + loss_reg_refine
  return total, {"loss_cls": loss_cls, "loss_reg": loss_reg,
                 "loss_reg_refine": loss_reg_refine, "num_pos": num_pos_raw}
