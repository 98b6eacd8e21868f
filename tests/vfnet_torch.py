"""A plain-PyTorch restatement of mmdetection's VarifocalNet, the reference
of tests/core/test_vfnet.py and tests/model/test_vfnet_head.py.

Written from open-mmlab/mmdetection's source (mmdet/models/dense_heads/
vfnet_head.py: VFNetHead._init_layers, forward_single, star_dcn_offset,
loss_by_feat after its targets; mmdet/models/losses/varifocal_loss.py;
mmdet/structures/bbox bbox_overlaps and mmdet/models/losses/iou_loss.py
giou_loss; mmdet/models/losses/utils.py weight_reduce_loss), with torch and
torchvision only: mmcv's ConvModule is Conv2d (no bias: it is followed by
GN) + GroupNorm + ReLU, mmcv's DeformConv2d is torchvision.ops.deform_conv2d
without a mask or bias, Scale is a learnable scalar. NCHW throughout.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

INF = 1e8
# weight_reduce_loss divides by avg_factor + eps (mmdet >= 2.x).
_REDUCE_EPS = torch.finfo(torch.float32).eps


# --- Losses -----------------------------------------------------------------

def varifocal_loss(pred, target, alpha=0.75, gamma=2.0, iou_weighted=True):
  """mmdet varifocal_loss, reduction 'none': pred, target [N, C]."""
  pred_sigmoid = pred.sigmoid()
  target = target.type_as(pred)
  if iou_weighted:
    focal_weight = target * (target > 0.0).float() + \
        alpha * (pred_sigmoid - target).abs().pow(gamma) * \
        (target <= 0.0).float()
  else:
    focal_weight = (target > 0.0).float() + \
        alpha * (pred_sigmoid - target).abs().pow(gamma) * \
        (target <= 0.0).float()
  return F.binary_cross_entropy_with_logits(
      pred, target, reduction="none") * focal_weight


def bbox_overlaps_aligned(b1, b2, mode="iou", eps=1e-6):
  """mmdet bbox_overlaps(is_aligned=True) of [N, 4] (x0, y0, x1, y1)."""
  area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
  area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
  lt = torch.max(b1[..., :2], b2[..., :2])
  rb = torch.min(b1[..., 2:], b2[..., 2:])
  wh = (rb - lt).clamp(min=0)
  overlap = wh[..., 0] * wh[..., 1]
  union = area1 + area2 - overlap
  union = torch.max(union, union.new_tensor([eps]))
  ious = overlap / union
  if mode == "iou":
    return ious
  enclosed_lt = torch.min(b1[..., :2], b2[..., :2])
  enclosed_rb = torch.max(b1[..., 2:], b2[..., 2:])
  enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
  enclose_area = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1],
                           union.new_tensor([eps]))
  return ious - (enclose_area - union) / enclose_area


def giou_loss(pred, target, eps=1e-7):
  return 1 - bbox_overlaps_aligned(pred, target, mode="giou", eps=eps)


def decode(points, ltrb):
  """DistancePointBBoxCoder.decode without max_shape."""
  return torch.stack([points[:, 0] - ltrb[:, 0], points[:, 1] - ltrb[:, 1],
                      points[:, 0] + ltrb[:, 2], points[:, 1] + ltrb[:, 3]],
                     -1)


def vfnet_loss(cls_scores, bbox_preds, bbox_preds_refine, labels,
               bbox_targets, points, alpha=0.75, gamma=2.0,
               iou_weighted=True, w_bbox=1.5, w_refine=2.0):
  """VFNetHead.loss_by_feat after get_targets, one process (reduce_mean is
  the identity): flattened cls [N, C], bbox (l, t, r, b) [N, 4] initial and
  refined, labels [N] (C = background), bbox_targets (l, t, r, b) [N, 4],
  points [N, 2]. Returns (loss_cls, loss_bbox, loss_bbox_rf)."""
  bg_class_ind = cls_scores.shape[1]
  pos_inds = torch.where((labels >= 0) & (labels < bg_class_ind))[0]
  num_pos = len(pos_inds)
  pos_bbox_preds = bbox_preds[pos_inds]
  pos_bbox_preds_refine = bbox_preds_refine[pos_inds]
  pos_labels = labels[pos_inds]
  num_pos_avg_per_gpu = max(float(num_pos), 1.0)
  pos_bbox_targets = bbox_targets[pos_inds]
  pos_points = points[pos_inds]

  pos_decoded_bbox_preds = decode(pos_points, pos_bbox_preds)
  pos_decoded_target_preds = decode(pos_points, pos_bbox_targets)
  iou_targets_ini = bbox_overlaps_aligned(
      pos_decoded_bbox_preds, pos_decoded_target_preds.detach()).clamp(
          min=1e-6)
  bbox_weights_ini = iou_targets_ini.clone().detach()
  bbox_avg_factor_ini = bbox_weights_ini.sum().clamp_(min=1).item()

  pos_decoded_bbox_preds_refine = decode(pos_points, pos_bbox_preds_refine)
  iou_targets_rf = bbox_overlaps_aligned(
      pos_decoded_bbox_preds_refine, pos_decoded_target_preds.detach()).clamp(
          min=1e-6)
  bbox_weights_rf = iou_targets_rf.clone().detach()
  bbox_avg_factor_rf = bbox_weights_rf.sum().clamp_(min=1).item()

  cls_iou_targets = torch.zeros_like(cls_scores)
  if num_pos > 0:
    loss_bbox = w_bbox * (giou_loss(
        pos_decoded_bbox_preds, pos_decoded_target_preds.detach())
        * bbox_weights_ini).sum() / (bbox_avg_factor_ini + _REDUCE_EPS)
    loss_bbox_refine = w_refine * (giou_loss(
        pos_decoded_bbox_preds_refine, pos_decoded_target_preds.detach())
        * bbox_weights_rf).sum() / (bbox_avg_factor_rf + _REDUCE_EPS)
    cls_iou_targets[pos_inds, pos_labels] = iou_targets_rf.clone().detach()
  else:
    loss_bbox = pos_bbox_preds.sum() * 0
    loss_bbox_refine = pos_bbox_preds_refine.sum() * 0
  loss_cls = varifocal_loss(cls_scores, cls_iou_targets, alpha, gamma,
                            iou_weighted).sum() / (num_pos_avg_per_gpu
                                                   + _REDUCE_EPS)
  return loss_cls, loss_bbox, loss_bbox_refine


# --- The head -----------------------------------------------------------------

class ConvModule(nn.Module):
  """mmcv ConvModule(3x3, norm GN, act ReLU): conv without bias."""

  def __init__(self, channels, groups):
    super().__init__()
    self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    self.gn = nn.GroupNorm(groups, channels)

  def forward(self, x):
    return F.relu(self.gn(self.conv(x)))


class Scale(nn.Module):
  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

  def forward(self, x):
    return x * self.scale


class DeformConv2d(nn.Module):
  """mmcv DeformConv2d(3x3, stride 1, padding 1, bias False)."""

  def __init__(self, channels):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))

  def forward(self, x, offset):
    return deform_conv2d(x, offset, self.weight, padding=(1, 1))


class VFNetHead(nn.Module):
  """VFNetHead's layers and forward_single (bbox_norm_type 'reg_denom' or
  'stride')."""

  def __init__(self, num_classes, channels, stacked_convs=3, groups=32,
               strides=(8, 16, 32, 64, 128), gradient_mul=0.1,
               bbox_norm_type="reg_denom",
               regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512),
                               (512, INF))):
    super().__init__()
    self.num_dconv_points = 9
    self.dcn_kernel = int(np.sqrt(self.num_dconv_points))
    self.dcn_pad = int((self.dcn_kernel - 1) / 2)
    dcn_base = np.arange(-self.dcn_pad, self.dcn_pad + 1).astype(np.float64)
    dcn_base_y = np.repeat(dcn_base, self.dcn_kernel)
    dcn_base_x = np.tile(dcn_base, self.dcn_kernel)
    dcn_base_offset = np.stack([dcn_base_y, dcn_base_x], axis=1).reshape((-1))
    self.dcn_base_offset = torch.tensor(dcn_base_offset).view(1, -1, 1, 1)
    self.strides = strides
    self.reg_denoms = [r[-1] for r in regress_ranges]
    self.reg_denoms[-1] = self.reg_denoms[-2] * 2
    self.gradient_mul = gradient_mul
    self.bbox_norm_type = bbox_norm_type

    self.cls_convs = nn.ModuleList(
        [ConvModule(channels, groups) for _ in range(stacked_convs)])
    self.reg_convs = nn.ModuleList(
        [ConvModule(channels, groups) for _ in range(stacked_convs)])
    self.vfnet_reg_conv = ConvModule(channels, groups)
    self.vfnet_reg = nn.Conv2d(channels, 4, 3, padding=1)
    self.scales = nn.ModuleList([Scale(1.0) for _ in strides])
    self.vfnet_reg_refine_dconv = DeformConv2d(channels)
    self.vfnet_reg_refine = nn.Conv2d(channels, 4, 3, padding=1)
    self.scales_refine = nn.ModuleList([Scale(1.0) for _ in strides])
    self.vfnet_cls_dconv = DeformConv2d(channels)
    self.vfnet_cls = nn.Conv2d(channels, num_classes, 3, padding=1)

  def forward_single(self, x, level):
    """Training mode: (cls_score, bbox_pred, bbox_pred_refine)."""
    scale, scale_refine = self.scales[level], self.scales_refine[level]
    stride, reg_denom = self.strides[level], self.reg_denoms[level]
    cls_feat = x
    reg_feat = x
    for cls_layer in self.cls_convs:
      cls_feat = cls_layer(cls_feat)
    for reg_layer in self.reg_convs:
      reg_feat = reg_layer(reg_feat)
    reg_feat_init = self.vfnet_reg_conv(reg_feat)
    if self.bbox_norm_type == "reg_denom":
      bbox_pred = scale(self.vfnet_reg(reg_feat_init)).float().exp() * reg_denom
    else:
      bbox_pred = scale(self.vfnet_reg(reg_feat_init)).float().exp() * stride
    dcn_offset = self.star_dcn_offset(bbox_pred, self.gradient_mul,
                                      stride).to(reg_feat.dtype)
    reg_feat = F.relu(self.vfnet_reg_refine_dconv(reg_feat, dcn_offset))
    bbox_pred_refine = scale_refine(self.vfnet_reg_refine(reg_feat)).float().exp()
    bbox_pred_refine = bbox_pred_refine * bbox_pred.detach()
    cls_feat = F.relu(self.vfnet_cls_dconv(cls_feat, dcn_offset))
    cls_score = self.vfnet_cls(cls_feat)
    return cls_score, bbox_pred, bbox_pred_refine

  def star_dcn_offset(self, bbox_pred, gradient_mul, stride):
    dcn_base_offset = self.dcn_base_offset.type_as(bbox_pred)
    bbox_pred_grad_mul = (1 - gradient_mul) * bbox_pred.detach() + \
        gradient_mul * bbox_pred
    bbox_pred_grad_mul = bbox_pred_grad_mul / stride
    n, _, h, w = bbox_pred.size()
    x1 = bbox_pred_grad_mul[:, 0, :, :]
    y1 = bbox_pred_grad_mul[:, 1, :, :]
    x2 = bbox_pred_grad_mul[:, 2, :, :]
    y2 = bbox_pred_grad_mul[:, 3, :, :]
    off = bbox_pred.new_zeros(n, 2 * self.num_dconv_points, h, w)
    off[:, 0, :, :] = -1.0 * y1
    off[:, 1, :, :] = -1.0 * x1
    off[:, 2, :, :] = -1.0 * y1
    off[:, 4, :, :] = -1.0 * y1
    off[:, 5, :, :] = x2
    off[:, 7, :, :] = -1.0 * x1
    off[:, 11, :, :] = x2
    off[:, 12, :, :] = y2
    off[:, 13, :, :] = -1.0 * x1
    off[:, 14, :, :] = y2
    off[:, 16, :, :] = y2
    off[:, 17, :, :] = x2
    return off - dcn_base_offset


def load_flax_head(head: VFNetHead, params) -> None:
  """Copies a Flax VFNet head's parameters (fcos_jax/model/vfnet_head.py)
  into `head`; our tower / vfnet_reg_conv biases must be 0 (mmdetection's
  ConvModules with GN have none)."""
  conv = lambda k: torch.tensor(np.asarray(k).transpose(3, 2, 0, 1))
  vec = lambda v: torch.tensor(np.asarray(v))

  def conv_module(m, conv_p, norm_p):
    assert not np.asarray(conv_p["bias"]).any(), "set the conv bias to 0"
    m.conv.weight.data = conv(conv_p["kernel"])
    m.gn.weight.data = vec(norm_p["scale"])
    m.gn.bias.data = vec(norm_p["bias"])

  for i, m in enumerate(head.cls_convs):
    conv_module(m, params[f"cls_tower_{i}"], params[f"cls_norm_{i}"])
  for i, m in enumerate(head.reg_convs):
    conv_module(m, params[f"box_tower_{i}"], params[f"box_norm_{i}"])
  conv_module(head.vfnet_reg_conv, params["vfnet_reg_conv"],
              params["vfnet_reg_norm"])
  for name in ("vfnet_reg", "vfnet_reg_refine", "vfnet_cls"):
    getattr(head, name).weight.data = conv(params[name]["kernel"])
    getattr(head, name).bias.data = vec(params[name]["bias"])
  for name in ("vfnet_reg_refine_dconv", "vfnet_cls_dconv"):
    getattr(head, name).weight.data = conv(params[name]["kernel"])
  for l in range(len(head.strides)):
    head.scales[l].scale.data = vec(params[f"scale_{l}"])
    head.scales_refine[l].scale.data = vec(params[f"scale_refine_{l}"])
