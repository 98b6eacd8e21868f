"""A plain-PyTorch restatement of mmdetection's TOOD, the reference of
tests/model/test_tood_head.py and tests/core/test_tood.py.

Written from open-mmlab/mmdetection's source (mmdet/models/dense_heads/
tood_head.py: TaskDecomposition, TOODHead._init_layers, forward,
deform_sampling, anchor_center, loss_single and loss after the targets;
mmdet/models/losses/gfocal_loss.py quality_focal_loss_with_prob;
mmdet/models/losses/focal_loss.py py_focal_loss_with_prob; GIoULoss over
bbox_overlaps; ATSSHead.centerness_target; AnchorGenerator's priors for
ratios [1], octave_base_scale 8, center_offset 0), with torch and
torchvision only: mmcv's ConvModule is Conv2d (no bias: it is followed by
GN) + GroupNorm + ReLU, mmcv's deform_conv2d is torchvision.ops.
deform_conv2d (same offset layout), Scale a learnable scalar. NCHW.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import deform_conv2d

from vfnet_torch import bbox_overlaps_aligned

# weight_reduce_loss divides by avg_factor + eps.
_REDUCE_EPS = torch.finfo(torch.float32).eps


class TaskDecomposition(nn.Module):

  def __init__(self, feat_channels, stacked_convs, la_down_rate, groups):
    super().__init__()
    self.feat_channels = feat_channels
    self.stacked_convs = stacked_convs
    self.in_channels = feat_channels * stacked_convs
    self.layer_attention = nn.Sequential(
        nn.Conv2d(self.in_channels, self.in_channels // la_down_rate, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(self.in_channels // la_down_rate, stacked_convs, 1),
        nn.Sigmoid())
    self.reduction_conv = nn.Conv2d(self.in_channels, feat_channels, 1,
                                    bias=False)
    self.gn = nn.GroupNorm(groups, feat_channels)

  def forward(self, feat, avg_feat):
    b, _, h, w = feat.shape
    weight = self.layer_attention(avg_feat)
    conv_weight = weight.reshape(b, 1, self.stacked_convs, 1) * \
        self.reduction_conv.weight.reshape(
            1, self.feat_channels, self.stacked_convs, self.feat_channels)
    conv_weight = conv_weight.reshape(b, self.feat_channels, self.in_channels)
    feat = feat.reshape(b, self.in_channels, h * w)
    feat = torch.bmm(conv_weight, feat).reshape(b, self.feat_channels, h, w)
    return F.relu(self.gn(feat))


class ConvModule(nn.Module):

  def __init__(self, cin, cout, groups):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    self.gn = nn.GroupNorm(groups, cout)

  def forward(self, x):
    return F.relu(self.gn(self.conv(x)))


def delta2bbox(rois, deltas, stds=(0.1, 0.1, 0.2, 0.2),
               wh_ratio_clip=16 / 1000):
  """DeltaXYWHBBoxCoder.decode (means 0, no max_shape): anchors [N, 4],
  deltas [N, 4] -> boxes [N, 4]."""
  d = deltas * deltas.new_tensor(stds).view(1, -1)
  pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
  pwh = rois[:, 2:] - rois[:, :2]
  max_ratio = abs(float(np.log(wh_ratio_clip)))
  gxy = pxy + pwh * d[:, :2]
  gwh = pwh * d[:, 2:].clamp(min=-max_ratio, max=max_ratio).exp()
  return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], -1)


class DCNv2ConvModule(nn.Module):
  """ConvModule(conv_cfg=dict(type='DCNv2', deform_groups=G), GN): mmcv's
  ModulatedDeformConv2dPack (no bias before GN): conv_offset gives 3 G K
  channels, chunked into o1, o2, mask; offset = cat(o1, o2), mask =
  sigmoid(mask); then GroupNorm and ReLU."""

  def __init__(self, cin, cout, groups, deform_groups):
    super().__init__()
    self.conv = nn.Module()
    self.conv.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
    nn.init.kaiming_uniform_(self.conv.weight, a=5 ** 0.5)  # As Conv2d.
    self.conv.conv_offset = nn.Conv2d(cin, deform_groups * 3 * 9, 3,
                                      padding=1)
    self.gn = nn.GroupNorm(groups, cout)

  def forward(self, x):
    o1, o2, mask = torch.chunk(self.conv.conv_offset(x), 3, dim=1)
    y = deform_conv2d(x, torch.cat((o1, o2), dim=1), self.conv.weight,
                      padding=1, mask=torch.sigmoid(mask))
    return F.relu(self.gn(y))


class TOODHead(nn.Module):
  """TOODHead, GN head; the first `num_dcn` inter convs DCNv2 with 4
  deformable groups (the dconv models); anchor_type 'anchor_free' (the box
  exp(x) * scale strides from the anchor centre) or 'anchor_based'
  (DeltaXYWH deltas scale * x decoded from the anchor, then / stride)."""

  def __init__(self, num_classes, feat_channels, stacked_convs, groups,
               strides=(8, 16, 32, 64, 128), num_dcn=0,
               anchor_type="anchor_free"):
    super().__init__()
    self.strides = strides
    self.anchor_type = anchor_type
    self.inter_convs = nn.ModuleList(
        [DCNv2ConvModule(feat_channels, feat_channels, groups, 4)
         if i < num_dcn else ConvModule(feat_channels, feat_channels, groups)
         for i in range(stacked_convs)])
    self.cls_decomp = TaskDecomposition(feat_channels, stacked_convs,
                                        stacked_convs * 8, groups)
    self.reg_decomp = TaskDecomposition(feat_channels, stacked_convs,
                                        stacked_convs * 8, groups)
    self.tood_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
    self.tood_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
    self.cls_prob_module = nn.Sequential(
        nn.Conv2d(feat_channels * stacked_convs, feat_channels // 4, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(feat_channels // 4, 1, 3, padding=1))
    self.reg_offset_module = nn.Sequential(
        nn.Conv2d(feat_channels * stacked_convs, feat_channels // 4, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(feat_channels // 4, 4 * 2, 3, padding=1))
    self.scales = nn.ParameterList(
        [nn.Parameter(torch.tensor(1.0)) for _ in strides])

  def grid_priors(self, h, w, idx):
    """AnchorGenerator.single_level_grid_priors: one square anchor of side
    8 s centred on (j s, i s) (center_offset 0)."""
    s = self.strides[idx]
    half = 8 * s / 2
    base = torch.tensor([-half, -half, half, half])
    sy, sx = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s,
                            indexing="ij")
    shifts = torch.stack([sx.reshape(-1), sy.reshape(-1)] * 2, -1).float()
    return base[None] + shifts

  @staticmethod
  def anchor_center(anchors):
    return torch.stack([(anchors[:, 2] + anchors[:, 0]) / 2,
                        (anchors[:, 3] + anchors[:, 1]) / 2], -1)

  @staticmethod
  def deform_sampling(feat, offset):
    c = feat.shape[1]
    weight = feat.new_ones(c, 1, 1, 1)
    return deform_conv2d(feat, offset, weight, stride=1, padding=0,
                         dilation=1)

  def forward_level(self, x, idx):
    """TOODHead.forward's loop body for level idx: (cls_score [B, C, H,
    W] probabilities, bbox_pred [B, 4, H, W] boxes in strides)."""
    b, _, h, w = x.shape
    stride = self.strides[idx]
    anchor = self.grid_priors(h, w, idx)
    anchor = torch.cat([anchor for _ in range(b)])
    inter_feats = []
    for inter_conv in self.inter_convs:
      x = inter_conv(x)
      inter_feats.append(x)
    feat = torch.cat(inter_feats, 1)
    avg_feat = F.adaptive_avg_pool2d(feat, (1, 1))
    cls_feat = self.cls_decomp(feat, avg_feat)
    reg_feat = self.reg_decomp(feat, avg_feat)
    cls_logits = self.tood_cls(cls_feat)
    cls_prob = self.cls_prob_module(feat)
    cls_score = (cls_logits.sigmoid() * cls_prob.sigmoid()).sqrt()
    if self.anchor_type == "anchor_based":
      reg_dist = (self.scales[idx] * self.tood_reg(reg_feat)).float()
      reg_dist = reg_dist.permute(0, 2, 3, 1).reshape(-1, 4)
      reg_bbox = delta2bbox(anchor, reg_dist) / stride
    else:
      reg_dist = (self.scales[idx] * self.tood_reg(reg_feat).exp()).float()
      reg_dist = reg_dist.permute(0, 2, 3, 1).reshape(-1, 4)
      points = self.anchor_center(anchor) / stride
      reg_bbox = torch.stack([points[:, 0] - reg_dist[:, 0],
                              points[:, 1] - reg_dist[:, 1],
                              points[:, 0] + reg_dist[:, 2],
                              points[:, 1] + reg_dist[:, 3]], -1)
    reg_bbox = reg_bbox.reshape(b, h, w, 4).permute(0, 3, 1, 2)
    reg_offset = self.reg_offset_module(feat)
    bbox_pred = self.deform_sampling(reg_bbox.contiguous(),
                                     reg_offset.contiguous())
    return cls_score, bbox_pred


def load_flax_head(head: TOODHead, params) -> None:
  """Copies a Flax T-head's parameters (fcos_jax/model/tood_head.py)."""
  conv = lambda k: torch.tensor(np.asarray(k).transpose(3, 2, 0, 1))
  vec = lambda v: torch.tensor(np.asarray(v))

  def set_conv(m, p):
    m.weight.data = conv(p["kernel"])
    if "bias" in p:
      m.bias.data = vec(p["bias"])

  for i, m in enumerate(head.inter_convs):
    p = params[f"inter_convs_{i}"]
    if isinstance(m, DCNv2ConvModule):
      m.conv.weight.data = conv(p["conv"]["kernel"])
      set_conv(m.conv.conv_offset, p["offset"])
    else:
      set_conv(m.conv, p)
    m.gn.weight.data = vec(params[f"inter_norm_{i}"]["scale"])
    m.gn.bias.data = vec(params[f"inter_norm_{i}"]["bias"])
  for name in ("cls_decomp", "reg_decomp"):
    p, m = params[name], getattr(head, name)
    set_conv(m.layer_attention[0], p["layer_attention_0"])
    set_conv(m.layer_attention[2], p["layer_attention_2"])
    set_conv(m.reduction_conv, p["reduction_conv"])
    m.gn.weight.data = vec(p["reduction_norm"]["scale"])
    m.gn.bias.data = vec(p["reduction_norm"]["bias"])
  set_conv(head.tood_cls, params["tood_cls"])
  set_conv(head.tood_reg, params["tood_reg"])
  for name in ("cls_prob_module", "reg_offset_module"):
    for i in (0, 2):
      set_conv(getattr(head, name)[i], params[f"{name}_{i}"])
  for l in range(len(head.strides)):
    head.scales[l].data = vec(params[f"scale_{l}"])


# --- Losses -----------------------------------------------------------------

def quality_focal_loss_with_prob(pred, label, score, beta=2.0):
  """gfocal_loss.quality_focal_loss_with_prob: pred [N, C] probabilities,
  label [N] (C = background), score [N] -> [N]."""
  scale_factor = pred
  zerolabel = scale_factor.new_zeros(pred.shape)
  loss = F.binary_cross_entropy(pred, zerolabel, reduction="none") * \
      scale_factor.pow(beta)
  bg_class_ind = pred.size(1)
  pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
  pos_label = label[pos].long()
  scale_factor = score[pos] - pred[pos, pos_label]
  loss[pos, pos_label] = F.binary_cross_entropy(
      pred[pos, pos_label], score[pos], reduction="none") * \
      scale_factor.abs().pow(beta)
  return loss.sum(dim=1)


def focal_loss_with_prob(pred, label, alpha=0.25, gamma=2.0):
  """focal_loss.py_focal_loss_with_prob: pred [N, C] probabilities, label
  [N] (C = background) -> [N, C]."""
  num_classes = pred.size(1)
  target = F.one_hot(label, num_classes=num_classes + 1)[:, :num_classes]
  target = target.type_as(pred)
  pt = (1 - pred) * target + pred * (1 - target)
  focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * \
      pt.pow(gamma)
  return F.binary_cross_entropy(pred, target, reduction="none") * focal_weight


def centerness_target(anchors, gts):
  """ATSSHead.centerness_target: anchors [N, 4], gts [N, 4] -> [N]."""
  anchors_cx = (anchors[:, 2] + anchors[:, 0]) / 2
  anchors_cy = (anchors[:, 3] + anchors[:, 1]) / 2
  l_ = anchors_cx - gts[:, 0]
  t_ = anchors_cy - gts[:, 1]
  r_ = gts[:, 2] - anchors_cx
  b_ = gts[:, 3] - anchors_cy
  left_right = torch.stack([l_, r_], dim=1)
  top_bottom = torch.stack([t_, b_], dim=1)
  return torch.sqrt(
      (left_right.min(dim=-1)[0] / left_right.max(dim=-1)[0]) *
      (top_bottom.min(dim=-1)[0] / top_bottom.max(dim=-1)[0]))


def tood_loss(anchors, cls_score, bbox_pred, labels, bbox_targets,
              alignment_metrics, strides, initial, beta=2.0, giou_weight=2.0,
              alpha=0.25, gamma=2.0):
  """TOODHead.loss_single summed over levels, then TOODHead.loss's
  normalisation (one process: reduce_mean is the identity).

  All flattened over images and locations: anchors [N, 4] (pixels),
  cls_score [N, C] probabilities, bbox_pred [N, 4] boxes in strides,
  labels [N] (C = background), bbox_targets [N, 4] boxes in pixels,
  alignment_metrics [N] (1 on positives in the warm-up), strides [N]."""
  num_classes = cls_score.size(1)
  if initial:
    loss_cls = focal_loss_with_prob(cls_score, labels, alpha, gamma).sum()
  else:
    loss_cls = quality_focal_loss_with_prob(
        cls_score, labels, alignment_metrics, beta).sum()
  loss_cls = loss_cls / (1.0 + _REDUCE_EPS)
  pos = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
  pos_targets = bbox_targets[pos] / strides[pos, None]
  weight = (centerness_target(anchors[pos], bbox_targets[pos]) if initial
            else alignment_metrics[pos])
  giou = bbox_overlaps_aligned(bbox_pred[pos], pos_targets, mode="giou")
  loss_bbox = giou_weight * ((1 - giou) * weight).sum() / (1.0 + _REDUCE_EPS)
  cls_avg = alignment_metrics.sum().clamp(min=1).item()
  bbox_avg = weight.sum().clamp(min=1).item()
  return loss_cls / cls_avg, loss_bbox / bbox_avg
