"""FCOS losses: focal classification, IoU-family regression, centerness BCE.

The terms and their normalisers: docs/algorithm.md, "Loss and its
normalisation". Shapes: B = images, P = locations over all levels,
C = classes. Elementwise losses take distances (l, t, r, b) [..., 4] of a
prediction and its target from the same location, in the same unit (pixels
here); both must be >= 0.

`fcos_loss` sums over the whole [B, ...] arrays. Under `jax.jit` with the
batch sharded over devices (and hosts), those sums are global sums, so
num_pos and the centerness normaliser are the global ones FCOS asks for:
no axis_name or explicit all-reduce is needed.

NaN safety: every division and log has a guarded operand, and background
lanes are fed harmless stand-in values *before* the loss (a `jnp.where` after
a NaN would still poison the gradient).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fcos_jax.model.outputs import as_head_outputs
from fcos_jax.core.box_coding import distances_to_pixels
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import Locations
from fcos_jax.core.targets import Targets

# Guards the denominators of IoU and GIoU, as torchvision's eps does.
_EPS = 1e-7


def _pow(base, gamma: float):
  # Integer gamma (2 in FCOS) as repeated multiplication: cheaper than pow and
  # with a clean gradient at base 0.
  if float(gamma).is_integer():
    return jax.lax.integer_pow(base, int(gamma))
  return base ** gamma


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25,
                       gamma: float = 2.0):
  """Elementwise sigmoid focal loss (Lin et al. 2017), not reduced.

  logits: [...]; targets: [...] in {0, 1} (or soft), or a Python number for
  all elements. alpha < 0 disables the class weighting. The formula of
  torchvision.ops.sigmoid_focal_loss, alpha_t * BCE(x, t) * (1 - p_t)^gamma,
  but with 1 - p_t computed without cancellation (from sigmoid(x) and
  sigmoid(-x)), and no selects on the targets: XLA:CPU vectorises it, which
  matters over [B, P, C].

  Equal to `optax.sigmoid_focal_loss` (tested), which we do not use because
  it is slower here: its logsumexp over a stacked [..., 2] array made
  value + gradient over [B, P, C] 4x-20x slower than ours on the CPU
  (`python benchmarks/bench_loss.py`, second table).
  """
  x = jnp.asarray(logits, jnp.float32)
  # -log(1 - p) = softplus(x) and -log(p) = softplus(-x), each computed
  # directly (softplus(x) - x would cancel for large x).
  log1p_e = jnp.log1p(jnp.exp(-jnp.abs(x)))
  neg_log_1mp = jnp.maximum(x, 0.0) + log1p_e
  neg_log_p = jnp.maximum(-x, 0.0) + log1p_e
  if isinstance(targets, (int, float)) and targets in (0, 1):
    # A constant target (the dense "all negative" sum): half the work.
    if targets == 0:
      loss = neg_log_1mp * _pow(jax.lax.logistic(x), gamma)
      return (1.0 - alpha) * loss if alpha >= 0 else loss
    loss = neg_log_p * _pow(jax.lax.logistic(-x), gamma)
    return alpha * loss if alpha >= 0 else loss
  t = jnp.asarray(targets, jnp.float32)
  ce = (1.0 - t) * neg_log_1mp + t * neg_log_p  # BCE with logits
  one_minus_p_t = (jax.lax.logistic(x) * (1.0 - t)
                   + jax.lax.logistic(-x) * t)
  loss = ce * _pow(one_minus_p_t, gamma)
  if alpha >= 0:
    loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
  return loss


def _iou_terms(pred, target, smooth: float, anchor_deltas: bool = False):
  """(IoU, union, enclosing area) of two boxes around one point.

  pred, target: [..., 4] (l, t, r, b) >= 0. IoU = (I + smooth) / (U + smooth).
  anchor_deltas: `pred` may have negative distances (a box decoded from
  anchor deltas need not contain its point): the overlap's width and height
  are clamped at 0.
  """
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  pl, pt, pr, pb = (pred[..., k] for k in range(4))
  tl, tt, tr, tb = (target[..., k] for k in range(4))
  pred_area = (pl + pr) * (pt + pb)
  target_area = (tl + tr) * (tt + tb)
  # Both boxes contain the point, so overlap widths add up from each side.
  inter_w = jnp.minimum(pl, tl) + jnp.minimum(pr, tr)
  inter_h = jnp.minimum(pt, tt) + jnp.minimum(pb, tb)
  if anchor_deltas:  # Either may be negative: boxes apart on that axis.
    inter_w, inter_h = jnp.maximum(inter_w, 0.0), jnp.maximum(inter_h, 0.0)
  inter = inter_w * inter_h
  union = pred_area + target_area - inter
  enclose = ((jnp.maximum(pl, tl) + jnp.maximum(pr, tr))
             * (jnp.maximum(pt, tt) + jnp.maximum(pb, tb)))
  iou = (inter + smooth) / (union + smooth + _EPS)
  return iou, union, enclose


def iou_loss(pred, target, smooth: float = 0.0, anchor_deltas: bool = False):
  """-log(IoU), elementwise over [..., 4] (l, t, r, b) pairs -> [...]."""
  iou, _, _ = _iou_terms(pred, target, smooth, anchor_deltas)
  # Floor keeps the loss and its gradient finite for disjoint boxes
  # (smooth = 0); the official smooth = 1 never reaches it.
  return -jnp.log(jnp.maximum(iou, _EPS))


def linear_iou_loss(pred, target, smooth: float = 0.0, anchor_deltas: bool = False):
  """1 - IoU, elementwise over [..., 4] (l, t, r, b) pairs -> [...]."""
  iou, _, _ = _iou_terms(pred, target, smooth, anchor_deltas)
  return 1.0 - iou


def giou_loss(pred, target, smooth: float = 0.0, anchor_deltas: bool = False):
  """1 - GIoU, elementwise over [..., 4] (l, t, r, b) pairs -> [...].

  GIoU = IoU - (E - U) / E with E the enclosing box area (Rezatofighi 2019).
  """
  iou, union, enclose = _iou_terms(pred, target, smooth, anchor_deltas)
  return 1.0 - (iou - (enclose - union) / (enclose + _EPS))


def centerness_loss(logits, targets):
  """Elementwise binary cross-entropy with logits [...] -> [...]."""
  return optax.sigmoid_binary_cross_entropy(
      jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32))


_REG_LOSSES = {"giou": giou_loss, "iou": iou_loss,
               "linear_iou": linear_iou_loss}


def quality_targets(pred, target, targets: Targets, cfg: ModelConfig):
  """[B, P] target of the quality branch: the centre-ness target, or with
  IoUQuality (AdelaiDet BOX_QUALITY "iou") the IoU of the detached decoded
  box `pred` with its target `target` ([B, P, 4] pixel distances), smoothed
  as the regression loss (cfg.loss.iou_smooth). 0 on background."""
  if cfg.quality.name == "iou":
    iou, _, _ = _iou_terms(jax.lax.stop_gradient(pred), target,
                           cfg.loss.iou_smooth,
                           cfg.box.name == "anchor_deltas")
    return jnp.where(targets.positive, iou, 0.0)
  return targets.centerness


def _check_inputs(outputs, targets, locations, cfg):
  b, p = targets.positive.shape
  if p != locations.num_locations:
    raise ValueError(
        f"fcos_loss: targets have P = {p} locations but locations has "
        f"{locations.num_locations}; use the same canvas size for both.")
  as_head_outputs(outputs, "fcos_loss").check(p, cfg.num_classes, "fcos_loss",
                                              batch=b)


def fcos_loss(outputs, targets: Targets, locations: Locations,
              cfg: ModelConfig):
  """The FCOS training loss of a batch (the paper's Eq. 2), normalised as
  docs/algorithm.md says.

  Args:
    outputs: the model dict: cls_logits [B, P, C] logits, box_regression
      [B, P, 4] activated distances (stride units if cfg.norm_reg_targets,
      else pixels), centerness [B, P] logits. Any float dtype; the loss is
      computed in float32.
    targets: `assign_targets(...)` for the same batch and locations.
    locations: the P locations (for the strides).
    cfg: reads focal_alpha, focal_gamma, reg_loss, reg_weighting, iou_smooth,
      reg_weight (ATSSLoss), quality.name (the quality target, see
      `quality_targets`), norm_reg_targets, num_classes.

  Returns:
    (total, metrics): total = loss_cls + loss_reg + loss_ctr, a float32
    scalar; metrics has loss_cls, loss_reg, loss_ctr and num_pos (the raw
    positive count over the batch, float32).

  The entry point of every loss: another `cfg.loss.name` is computed by its
  own module (loss "gfl": `fcos_jax.core.gfl.gfl_loss`; loss "vfnet":
  `fcos_jax.core.vfnet.vfnet_loss`; loss "tood":
  `fcos_jax.core.tood.tood_loss`).
  """
  if cfg.loss.name == "gfl":
    from fcos_jax.core import gfl  # pylint: disable=import-outside-toplevel
    return gfl.gfl_loss(outputs, targets, locations, cfg)
  if cfg.loss.name == "vfnet":
    from fcos_jax.core import vfnet  # pylint: disable=import-outside-toplevel
    return vfnet.vfnet_loss(outputs, targets, locations, cfg)
  if cfg.loss.name == "tood":
    from fcos_jax.core import tood  # pylint: disable=import-outside-toplevel
    return tood.tood_loss(outputs, targets, locations, cfg)
  _check_inputs(outputs, targets, locations, cfg)
  positive = targets.positive
  pos = positive.astype(jnp.float32)                        # [B, P]
  num_pos_raw = jnp.sum(pos)
  num_pos = jnp.maximum(num_pos_raw, 1.0)

  # Classification over every location and class, as "all negative" over
  # [B, P, C] plus a correction at the one positive class of each positive
  # location ([B, P]): the same sum as with a one-hot target, without
  # building the one-hot (which costs XLA:CPU 7x the focal loss itself).
  logits = outputs.cls_logits.astype(jnp.float32)        # [B, P, C]
  alpha, gamma = cfg.loss.focal_alpha, cfg.loss.focal_gamma
  # Per location first, then over locations: shorter float32 sums.
  all_negative = jnp.sum(jnp.sum(
      sigmoid_focal_loss(logits, 0.0, alpha, gamma), axis=-1))
  x_true = jnp.take_along_axis(
      logits, targets.labels[..., None], axis=-1)[..., 0]   # [B, P]
  swap = (sigmoid_focal_loss(x_true, 1.0, alpha, gamma)
          - sigmoid_focal_loss(x_true, 0.0, alpha, gamma))
  loss_cls = (all_negative + jnp.sum(jnp.where(positive, swap, 0.0))) / num_pos

  # Regression on positives, in pixels. Background lanes get a unit box for
  # both operands so no 0/0 reaches the (masked) gradient.
  pred = distances_to_pixels(outputs.box_regression.astype(jnp.float32),
                             locations.strides, cfg)        # [B, P, 4]
  mask4 = positive[..., None]
  pred = jnp.where(mask4, pred, 1.0)
  target = jnp.where(mask4, targets.reg_targets.astype(jnp.float32), 1.0)
  reg = _REG_LOSSES[cfg.loss.reg_loss](  # [B, P]
      pred, target, cfg.loss.iou_smooth, cfg.box.name == "anchor_deltas")
  if cfg.loss.reg_weighting == "centerness":
    weight = jnp.where(positive, targets.centerness, 0.0)
    total_weight = jnp.sum(weight)
    # No positives: the sum is 0 and so is the loss (not 0/0).
    denom = jnp.where(total_weight > 0, total_weight, 1.0)
  else:
    weight, denom = pos, num_pos
  loss_reg = jnp.sum(jnp.where(positive, reg * weight, 0.0)) / denom
  loss_reg = loss_reg * getattr(cfg.loss, "reg_weight", 1.0)  # ATSSLoss: 2.

  ctr_logits = outputs.centerness.astype(jnp.float32)
  ctr = centerness_loss(ctr_logits, quality_targets(pred, target, targets, cfg))
  loss_ctr = jnp.sum(jnp.where(positive, ctr, 0.0)) / num_pos

  total = loss_cls + loss_reg + loss_ctr
  return total, {"loss_cls": loss_cls, "loss_reg": loss_reg,
                 "loss_ctr": loss_ctr, "num_pos": num_pos_raw}
