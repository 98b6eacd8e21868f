"""The IoU quality branch (AdelaiDet BOX_QUALITY "iou") and the ATSS loss
against NumPy restatements of AdelaiDet `FCOSOutputs.fcos_losses` and
sfzhang15/ATSS `ATSSLossComputation.__call__`, and hand-computed cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.core import assign, losses, postprocess
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.targets import Targets
from fcos_jax.model import config as config_lib
from fcos_jax.model.outputs import HeadOutputs

CANVAS = (96, 128)


def softplus(x):
  return np.logaddexp(0, x)


def numpy_iou_giou(pred, tgt, smooth):
  """AdelaiDet `compute_ious` (with `smooth` in place of its +1)."""
  pl, pt, pr, pb = pred.T
  tl, tt, tr, tb = tgt.T
  inter = (np.minimum(pl, tl) + np.minimum(pr, tr)) * (
      np.minimum(pt, tt) + np.minimum(pb, tb))
  union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter
  enclose = (np.maximum(pl, tl) + np.maximum(pr, tr)) * (
      np.maximum(pt, tt) + np.maximum(pb, tb))
  iou = (inter + smooth) / (union + smooth)
  return iou, iou - (enclose - union) / enclose


def numpy_reg_and_quality(outputs, targets, strides, cfg):
  """(loss_reg, loss_ctr) in float64: the quality BCE over N_pos against
  the IoU (iou) or centre-ness target; the GIoU loss unweighted over N_pos
  or weighted by centre-ness targets over their sum, times reg_weight."""
  pos = np.asarray(targets.positive)
  num_pos = max(pos.sum(), 1)
  pred = np.asarray(outputs.box_regression, np.float64)[pos]
  pred = pred * np.broadcast_to(strides, pos.shape)[pos][:, None]
  tgt = np.asarray(targets.reg_targets, np.float64)[pos]
  ctr_t = np.asarray(targets.centerness, np.float64)[pos]
  iou, giou = numpy_iou_giou(pred, tgt, cfg.loss.iou_smooth)
  per_box = 1 - giou
  if cfg.loss.reg_weighting == "centerness":
    reg = (per_box * ctr_t).sum() / ctr_t.sum()
  else:
    reg = per_box.sum() / num_pos
  reg *= getattr(cfg.loss, "reg_weight", 1.0)
  quality = iou if cfg.quality.name == "iou" else ctr_t
  z = np.asarray(outputs.centerness, np.float64)[pos]
  ctr = (quality * softplus(-z) + (1 - quality) * softplus(z)).sum() / num_pos
  return reg, ctr


def random_problem(cfg, seed=0):
  rng = np.random.default_rng(seed)
  locations = compute_locations(CANVAS, cfg)
  h, w = CANVAS
  xy = rng.uniform(0, [w, h], (3, 6, 2))
  wh = rng.uniform(6, 80, (3, 6, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(
      np.float32)
  classes = rng.integers(0, cfg.num_classes, (3, 6)).astype(np.int32)
  valid = np.ones((3, 6), bool)
  targets = assign.assign(boxes, classes, valid, ~valid, locations, cfg)
  p = locations.num_locations
  outputs = HeadOutputs(
      cls_logits=rng.normal(-3, 2, (3, p, cfg.num_classes)).astype(np.float32),
      box_regression=rng.uniform(0.2, 6, (3, p, 4)).astype(np.float32),
      centerness=rng.normal(0, 1.5, (3, p)).astype(np.float32))
  return locations, targets, outputs


CONFIGS = {
    "iou": config_lib.iou(num_classes=7),
    "atss": config_lib.atss(num_classes=7),
    "iou_on_atss": config_lib.atss(num_classes=7, quality={"name": "iou"}),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_loss_matches_numpy(name):
  cfg = CONFIGS[name]
  locations, targets, outputs = random_problem(cfg, seed=len(name))
  total, metrics = jax.jit(
      lambda o, t: losses.fcos_loss(o, t, locations, cfg))(outputs, targets)
  reg, ctr = numpy_reg_and_quality(outputs, targets, locations.strides, cfg)
  assert metrics["num_pos"] > 10
  np.testing.assert_allclose(metrics["loss_reg"], reg, rtol=2e-5)
  np.testing.assert_allclose(metrics["loss_ctr"], ctr, rtol=2e-5)
  np.testing.assert_allclose(
      total, metrics["loss_cls"] + metrics["loss_reg"] + metrics["loss_ctr"],
      rtol=1e-6)


def test_iou_preset_is_adelaidet_r50_1x_iou():
  cfg = config_lib.iou()
  assert cfg.quality == config_lib.IoUQuality(on="reg")
  assert cfg.loss.reg_weighting == "none" and cfg.loss.reg_loss == "giou"
  assert cfg.loss.iou_smooth == 1.0  # AdelaiDet compute_ious: (I+1)/(U+1).
  assert cfg.assign == config_lib.FCOSAssign()  # centre sampling 1.5 etc.


def _one_positive(reg_pred_px, reg_target, quality_logit, cfg):
  """A 1-image problem with one positive location (index 0, stride 8)."""
  locations = compute_locations(CANVAS, cfg)
  p = locations.num_locations
  positive = np.zeros((1, p), bool)
  positive[0, 0] = True
  reg_targets = np.zeros((1, p, 4), np.float32)
  reg_targets[0, 0] = reg_target
  targets = Targets(labels=np.zeros((1, p), np.int32), positive=positive,
                    reg_targets=reg_targets,
                    centerness=np.where(positive, 0.5, 0).astype(np.float32),
                    matched_index=np.where(positive, 0, -1).astype(np.int32))
  box = np.ones((1, p, 4), np.float32)
  box[0, 0] = np.asarray(reg_pred_px, np.float32) / 8  # stride units
  ctr = np.zeros((1, p), np.float32)
  ctr[0, 0] = quality_logit

  def loss(box_regression, centerness):
    out = HeadOutputs(cls_logits=np.zeros((1, p, cfg.num_classes), np.float32),
                      box_regression=box_regression, centerness=centerness)
    return losses.fcos_loss(out, targets, locations, cfg)[1]

  return loss, box, ctr


def test_iou_quality_by_hand_and_detached():
  cfg = config_lib.iou(num_classes=2)
  loss, box, ctr = _one_positive((2, 2, 2, 2), (4, 4, 4, 4), 1.0, cfg)
  metrics = loss(box, ctr)
  # Pred 4x4 inside target 8x8: IoU = (16 + 1) / (64 + 1).
  t = 17 / 65
  want = t * math.log1p(math.exp(-1)) + (1 - t) * math.log1p(math.exp(1))
  np.testing.assert_allclose(metrics["loss_ctr"], want, rtol=1e-6)
  # GIoU = IoU (the target encloses the prediction), over N_pos = 1.
  np.testing.assert_allclose(metrics["loss_reg"], 1 - t, rtol=1e-6)
  # The IoU target is detached: the quality term sends no gradient into
  # the box regression, only into its own logit.
  g_box, g_ctr = jax.grad(lambda b, c: loss(b, c)["loss_ctr"],
                          argnums=(0, 1))(jnp.asarray(box), jnp.asarray(ctr))
  assert not np.asarray(g_box).any()
  np.testing.assert_allclose(g_ctr[0, 0], 1 / (1 + math.exp(-1)) - t,
                             rtol=1e-5)


def test_atss_reg_weight_by_hand():
  cfg = config_lib.atss(num_classes=2)
  loss, box, ctr = _one_positive((2, 2, 2, 2), (4, 4, 4, 4), 0.0, cfg)
  # GIoU loss without smoothing: 1 - 16/64, weight 2, centre-ness weighted
  # over the centre-ness sum (one term: the weight cancels).
  np.testing.assert_allclose(loss(box, ctr)["loss_reg"], 2 * 0.75, rtol=1e-6)
  # The centre-ness branch keeps its target (0.5 here): BCE at logit 0.
  np.testing.assert_allclose(loss(box, ctr)["loss_ctr"], math.log(2),
                             rtol=1e-6)


def test_inference_scores_with_the_predicted_iou():
  """At inference the IoU quality logit takes centre-ness's place:
  the same outputs give the same detections under both branches."""
  base = config_lib.official(num_classes=3)
  with_iou = base.replace(quality={"name": "iou"})
  locations, _, outputs = random_problem(base, seed=3)
  hw = np.array([[96, 128]] * 3, np.int32)
  a = postprocess.postprocess(outputs, locations, hw, hw, base)
  b = postprocess.postprocess(outputs, locations, hw, hw, with_iou)
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
  prob = jax.nn.sigmoid(outputs.cls_logits[0])
  q = jax.nn.sigmoid(outputs.centerness[0])
  best = float(np.sqrt(np.max(np.asarray(prob * q[:, None]))))
  np.testing.assert_allclose(float(b["scores"][0, 0]), best, rtol=1e-6)
