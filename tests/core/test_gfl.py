"""GFL: QFL, DFL, the Integral and the whole loss against a PyTorch
restatement of mmdetection's gfocal_loss.py / GFLHead.loss_single (written
from its source, plain torch), values and gradients; hand-computed cases;
the model's GFL head and the post-processing without centre-ness."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcos_jax.core import gfl, losses, postprocess
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.targets import Targets
from fcos_jax.errors import ConfigError
from fcos_jax.model import config as config_lib
from fcos_jax.model.outputs import HeadOutputs


# --- A PyTorch restatement of mmdetection's GFL (reference) ------------------

def torch_qfl(pred, label, score, beta=2.0):
  """mmdet quality_focal_loss: pred [N, C], label [N] (C = background),
  score [N] -> [N] (summed over classes)."""
  pred_sigmoid = pred.sigmoid()
  scale_factor = pred_sigmoid
  zerolabel = scale_factor.new_zeros(pred.shape)
  loss = F.binary_cross_entropy_with_logits(
      pred, zerolabel, reduction="none") * scale_factor.pow(beta)
  bg = pred.size(1)
  pos = ((label >= 0) & (label < bg)).nonzero().squeeze(1)
  pos_label = label[pos].long()
  scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
  loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
      pred[pos, pos_label], score[pos],
      reduction="none") * scale_factor.abs().pow(beta)
  return loss.sum(dim=1)


def torch_dfl(pred, label):
  """mmdet distribution_focal_loss: pred [N, n+1], label [N] -> [N]."""
  dis_left = label.long()
  dis_right = dis_left + 1
  weight_left = dis_right.float() - label
  weight_right = label - dis_left.float()
  return (F.cross_entropy(pred, dis_left, reduction="none") * weight_left
          + F.cross_entropy(pred, dis_right, reduction="none") * weight_right)


def torch_integral(x, reg_max):
  """mmdet Integral: [N, 4 (n+1)] -> [N, 4]."""
  project = torch.linspace(0, reg_max, reg_max + 1)
  x = F.softmax(x.reshape(-1, reg_max + 1), dim=1)
  return F.linear(x, project.type_as(x)).reshape(-1, 4)


def torch_overlaps(b1, b2, mode="iou", eps=1e-6):
  """mmdet bbox_overlaps(is_aligned=True) for xyxy boxes."""
  area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
  area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
  lt = torch.max(b1[:, :2], b2[:, :2])
  rb = torch.min(b1[:, 2:], b2[:, 2:])
  wh = (rb - lt).clamp(min=0)
  overlap = wh[:, 0] * wh[:, 1]
  union = torch.max(area1 + area2 - overlap, torch.tensor([eps]))
  ious = overlap / union
  if mode == "iou":
    return ious
  e_lt = torch.min(b1[:, :2], b2[:, :2])
  e_rb = torch.max(b1[:, 2:], b2[:, 2:])
  e_wh = (e_rb - e_lt).clamp(min=0)
  e_area = torch.max(e_wh[:, 0] * e_wh[:, 1], torch.tensor([eps]))
  return ious - (e_area - union) / e_area


def distance2bbox(points, d):
  return torch.stack([points[:, 0] - d[:, 0], points[:, 1] - d[:, 1],
                      points[:, 0] + d[:, 2], points[:, 1] + d[:, 3]], -1)


def bbox2distance(points, bbox, max_dis, eps=0.1):
  d = torch.stack([points[:, 0] - bbox[:, 0], points[:, 1] - bbox[:, 1],
                   bbox[:, 2] - points[:, 0], bbox[:, 3] - points[:, 1]], -1)
  return d.clamp(min=0, max=max_dis - eps)


def torch_gfl_loss(cls_score, bbox_pred, points, strides, labels, gt_boxes,
                   reg_max=16, beta=2.0, w_giou=2.0, w_dfl=0.25):
  """GFLHead.loss_single over all locations as one level with per-location
  strides, then GFLHead.loss's normalisation (one image set, one GPU).

  cls_score [N, C], bbox_pred [N, 4 (n+1)], points [N, 2] pixels, strides
  [N], labels [N] (C = background), gt_boxes [N, 4] xyxy pixels."""
  num_classes = cls_score.shape[1]
  pos_inds = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
  num_total_samples = max(float(len(pos_inds)), 1.0)
  score = cls_score.new_zeros(labels.shape)
  s = strides[pos_inds][:, None]
  pos_bbox_pred = bbox_pred[pos_inds]
  centers = points[pos_inds] / s
  weight_targets = cls_score.detach().sigmoid().max(dim=1)[0][pos_inds]
  corners = torch_integral(pos_bbox_pred, reg_max)
  decoded = distance2bbox(centers, corners)
  targets = gt_boxes[pos_inds] / s
  score[pos_inds] = torch_overlaps(decoded.detach(), targets)
  pred_corners = pos_bbox_pred.reshape(-1, reg_max + 1)
  target_corners = bbox2distance(centers, targets, reg_max).reshape(-1)
  # GIoULoss (loss_weight 2, avg_factor 1 -> sum), DFL (avg_factor 4).
  loss_bbox = w_giou * ((1 - torch_overlaps(decoded, targets, "giou"))
                        * weight_targets).sum()
  loss_dfl = w_dfl * (torch_dfl(pred_corners, target_corners)
                      * weight_targets[:, None].expand(-1, 4).reshape(-1)
                      ).sum() / 4.0
  loss_cls = torch_qfl(cls_score, labels, score, beta).sum() / num_total_samples
  avg_factor = weight_targets.sum().clamp(min=1)
  return loss_cls, loss_bbox / avg_factor, loss_dfl / avg_factor


# --- Elementwise pieces --------------------------------------------------------

def test_hand_computed_dfl_qfl_integral():
  # 3 bins {0, 1, 2}, softmax (1/4, 1/2, 1/4); target 0.25: 0.75 CE(bin 0)
  # + 0.25 CE(bin 1) = 0.75 log 4 + 0.25 log 2 = 1.75 log 2; mean 1.0.
  logits = np.array([0.0, math.log(2.0), 0.0], np.float32)
  np.testing.assert_allclose(gfl.distribution_focal_loss(logits, 0.25),
                             1.75 * math.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(gfl.integral(jnp.asarray(logits)), 1.0,
                             rtol=1e-6)
  # A whole-bin target puts all weight on one bin: CE(bin 1) = log 2.
  np.testing.assert_allclose(gfl.distribution_focal_loss(logits, 1.0),
                             math.log(2.0), rtol=1e-6)
  # QFL at x = 0 (p = 1/2) toward 1: log 2 * (1/2)^2; toward 1/2: nothing
  # but the BCE's, times |1/2 - 1/2|^2 = 0.
  np.testing.assert_allclose(gfl.quality_focal_loss(0.0, 1.0),
                             0.25 * math.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(gfl.quality_focal_loss(0.0, 0.5), 0.0, atol=1e-9)


def test_qfl_dfl_integral_against_torch():
  rng = np.random.default_rng(0)
  n, c, reg_max = 64, 5, 16
  pred = rng.normal(0, 3, (n, c)).astype(np.float32)
  label = rng.integers(0, c + 1, n)  # c = background.
  score = rng.uniform(0, 1, n).astype(np.float32)
  tp = torch.tensor(pred, requires_grad=True)
  want = torch_qfl(tp, torch.tensor(label), torch.tensor(score))
  want.sum().backward()
  pos = label < c
  # Ours, dense: the score at the positive's class, 0 elsewhere.
  soft = np.zeros((n, c), np.float32)
  soft[np.nonzero(pos)[0], label[pos]] = score[pos]
  f = lambda x: gfl.quality_focal_loss(x, soft).sum(-1)
  np.testing.assert_allclose(f(pred), want.detach().numpy(), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda x: f(x).sum())(pred),
                             tp.grad.numpy(), rtol=1e-5, atol=1e-6)

  d = rng.normal(0, 2, (n, reg_max + 1)).astype(np.float32)
  y = rng.uniform(0, reg_max - 0.1, n).astype(np.float32)
  y[:4] = [0.0, 3.0, reg_max - 0.1, 7.5]  # Whole bins and the top edge.
  td = torch.tensor(d, requires_grad=True)
  want = torch_dfl(td, torch.tensor(y))
  want.sum().backward()
  np.testing.assert_allclose(gfl.distribution_focal_loss(d, y),
                             want.detach().numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      jax.grad(lambda x: gfl.distribution_focal_loss(x, y).sum())(d),
      td.grad.numpy(), rtol=1e-5, atol=1e-6)

  x = rng.normal(0, 2, (n // 4, 4 * (reg_max + 1))).astype(np.float32)
  want = torch_integral(torch.tensor(x), reg_max).numpy()
  got = gfl.integral(jnp.asarray(x).reshape(-1, 4, reg_max + 1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_iou_and_giou_against_torch():
  rng = np.random.default_rng(1)
  pred = rng.uniform(0, 5, (50, 4)).astype(np.float32)
  target = rng.uniform(0, 5, (50, 4)).astype(np.float32)
  pts = torch.zeros(50, 2)
  b1 = distance2bbox(pts, torch.tensor(pred))
  b2 = distance2bbox(pts, torch.tensor(target))
  iou, giou = gfl.iou_and_giou(pred, target)
  np.testing.assert_allclose(iou, torch_overlaps(b1, b2).numpy(), rtol=1e-5)
  np.testing.assert_allclose(giou, torch_overlaps(b1, b2, "giou").numpy(),
                             rtol=1e-5, atol=1e-6)


# --- The whole loss ----------------------------------------------------------

def _gfl_cfg(num_classes=3, **kw):
  return config_lib.gfl(num_classes=num_classes, **kw)


def _random_problem(cfg, seed, canvas=(64, 64), b=2):
  rng = np.random.default_rng(seed)
  loc = compute_locations(canvas, cfg)
  p, c, n = loc.num_locations, cfg.num_classes, cfg.quality.reg_max
  cls = rng.normal(-2, 2, (b, p, c)).astype(np.float32)
  dist = rng.normal(0, 1, (b, p, 4, n + 1)).astype(np.float32)
  positive = rng.uniform(size=(b, p)) < 0.2
  labels = rng.integers(0, c, (b, p)).astype(np.int32)
  strides = np.asarray(loc.strides, np.float32)[None, :, None]
  # Target distances from 0.2 to 20 strides: some beyond reg_max (clamped).
  reg = (rng.uniform(0.2, 20, (b, p, 4)) * strides).astype(np.float32)
  reg = np.where(positive[..., None], reg, 0.0).astype(np.float32)
  tgt = Targets(labels=jnp.asarray(labels), positive=jnp.asarray(positive),
                reg_targets=jnp.asarray(reg),
                centerness=jnp.zeros((b, p), jnp.float32),
                matched_index=jnp.where(positive, 0, -1).astype(jnp.int32))
  return loc, cls, dist, tgt


def _ours(cls, dist, tgt, loc, cfg):
  out = HeadOutputs(cls_logits=cls, box_regression=gfl.integral(dist),
                    centerness=None, box_distribution=dist)
  return losses.fcos_loss(out, tgt, loc, cfg)  # Dispatches on loss.name.


@pytest.mark.parametrize("seed", [0, 1])
def test_gfl_loss_against_torch_values_and_gradients(seed):
  cfg = _gfl_cfg()
  loc, cls, dist, tgt = _random_problem(cfg, seed)
  b, p, c = cls.shape
  n = cfg.quality.reg_max

  tcls = torch.tensor(cls.reshape(b * p, c), requires_grad=True)
  tdist = torch.tensor(dist.reshape(b * p, 4 * (n + 1)), requires_grad=True)
  points = torch.tensor(np.tile(np.asarray(loc.points), (b, 1)))
  strides = torch.tensor(np.tile(np.asarray(loc.strides, np.float32), b))
  pos = np.asarray(tgt.positive).reshape(-1)
  labels = torch.tensor(np.where(pos, np.asarray(tgt.labels).reshape(-1), c))
  reg = torch.tensor(np.asarray(tgt.reg_targets).reshape(-1, 4))
  gt = torch.stack([points[:, 0] - reg[:, 0], points[:, 1] - reg[:, 1],
                    points[:, 0] + reg[:, 2], points[:, 1] + reg[:, 3]], -1)
  want = torch_gfl_loss(tcls, tdist, points, strides, labels, gt, n)
  sum(want).backward()

  (total, metrics), grads = jax.value_and_grad(
      lambda x, d: _ours(x, d, tgt, loc, cfg), argnums=(0, 1),
      has_aux=True)(cls, dist)
  for key, w in zip(("loss_cls", "loss_reg", "loss_dfl"), want):
    np.testing.assert_allclose(metrics[key], float(w.detach()), rtol=2e-5,
                               err_msg=key)
  np.testing.assert_allclose(total, float(sum(want).detach()), rtol=2e-5)
  np.testing.assert_allclose(grads[0].reshape(b * p, c), tcls.grad.numpy(),
                             rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(grads[1].reshape(b * p, -1), tdist.grad.numpy(),
                             rtol=1e-4, atol=1e-7)
  assert metrics["num_pos"] == pos.sum()


def test_gfl_loss_no_positives_is_finite():
  cfg = _gfl_cfg()
  loc, cls, dist, tgt = _random_problem(cfg, 3)
  tgt = tgt._replace(positive=jnp.zeros_like(tgt.positive),
                     reg_targets=jnp.zeros_like(tgt.reg_targets))
  (total, m), g = jax.value_and_grad(
      lambda x: _ours(x, dist, tgt, loc, cfg), has_aux=True)(cls)
  assert np.isfinite(total) and np.all(np.isfinite(g))
  assert float(m["loss_reg"]) == 0.0 and float(m["loss_dfl"]) == 0.0


# --- Config, model and post-processing --------------------------------------

def test_gfl_preset_and_config_checks():
  cfg = config_lib.gfl()
  assert cfg.quality.name == "gfl_joint" and cfg.quality.reg_max == 16
  assert (cfg.loss.qfl_beta, cfg.loss.giou_weight, cfg.loss.dfl_weight) == (
      2.0, 2.0, 0.25)
  expect = "atss" if "atss" in config_lib.ASSIGNERS else "fcos"
  assert cfg.assign.name == expect
  assert config_lib.ModelConfig.from_dict({"preset": "gfl"}) == cfg
  assert config_lib.ModelConfig.from_dict(
      {"preset": "gfl", "reg_max": 8}).quality.reg_max == 8
  with pytest.raises(ConfigError, match="go together"):
    config_lib.official(loss={"name": "gfl"})
  with pytest.raises(ConfigError, match="go together"):
    config_lib.gfl(loss={"name": "fcos"})
  with pytest.raises(ConfigError, match="norm_reg_targets"):
    config_lib.gfl(norm_reg_targets=False)
  with pytest.raises(ConfigError, match="reg_max"):
    config_lib.gfl(reg_max=0)


def test_gfl_model_outputs_and_postprocess():
  from fcos_jax.model.fcos import FCOS, init_variables
  from tests.tiny_run import tiny_model
  base = tiny_model(3)
  cfg = config_lib.gfl(**{k: getattr(base, k) for k in (
      "num_classes", "depth", "width", "freeze_at", "backbone_norm",
      "fpn_channels", "head_convs", "gn_groups", "input_bgr", "input_range",
      "pixel_mean", "pixel_std")}, reg_max=7, score_thresh=0.001)
  params = init_variables(cfg, jax.random.PRNGKey(0))["params"]
  head = params["head"]
  assert "centerness" not in head
  assert head["box_regression"]["kernel"].shape[-1] == 4 * 8
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)),
                  jnp.float32)
  out = FCOS(cfg).apply({"params": params}, x)
  loc = compute_locations((64, 64), cfg)
  p = loc.num_locations
  assert out.centerness is None
  assert out.box_distribution.shape == (2, p, 4, 8)
  np.testing.assert_allclose(out.box_regression,
                             gfl.integral(out.box_distribution), rtol=1e-6)
  assert out.check(p, 3, "test") == 2

  hw = jnp.asarray([[64, 64], [40, 64]], jnp.int32)
  dets = postprocess.postprocess(out, loc, hw, hw, cfg)
  # NumPy restatement: score = sigmoid(cls) (no sqrt, no centre-ness);
  # boxes from the expected distances in strides.
  prob = 1 / (1 + np.exp(-np.asarray(out.cls_logits, np.float64)))
  for i in range(2):
    k = int(dets["valid"][i].sum())
    assert k > 0
    loc_i = np.asarray(postprocess.postprocess(
        out, loc, hw, hw, cfg, with_locations=True)["locations"][i][:k])
    cl = np.asarray(dets["classes"][i][:k])
    np.testing.assert_allclose(dets["scores"][i][:k], prob[i, loc_i, cl],
                               rtol=1e-5)
    d = np.asarray(out.box_regression[i])[loc_i] * np.asarray(
        loc.strides)[loc_i, None]
    pts = np.asarray(loc.points)[loc_i]
    boxes = np.stack([pts[:, 0] - d[:, 0], pts[:, 1] - d[:, 1],
                      pts[:, 0] + d[:, 2], pts[:, 1] + d[:, 3]], -1)
    h, w = np.asarray(hw[i])
    boxes = np.clip(boxes, 0, [w, h, w, h])
    np.testing.assert_allclose(dets["boxes"][i][:k], boxes, rtol=1e-5,
                               atol=1e-4)
