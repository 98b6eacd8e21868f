"""The official FCOS (tianzhi0549/FCOS, maskrcnn-benchmark) restated in
PyTorch for the converter's parity tests: written from reading its
architecture (ResNet body, FPN with LastLevelP6P7, FCOSHead, DFConv2d,
FCOSPostProcessor), with its module names, so `state_dict()` has the
checkpoint's names and shapes. Any width; eval mode only.

Two conventions of the original are not restated: boxes are clipped to
[0, w] x [0, h] (not w - 1, h - 1) and NMS uses continuous areas (not
+1-pixel widths), which is what fcos_jax does (see fcos_jax/core/postprocess.py).
"""

import torch
import torchvision
from torch import nn
from torch.nn import functional as F


class FrozenBatchNorm2d(nn.Module):
  """Statistics and affine as buffers; no epsilon (detectron2's, as in
  AdelaiDet: 1e-5, set by GeneralizedRCNN's bn_eps)."""

  def __init__(self, n, eps=0.0):
    super().__init__()
    self.eps = eps
    for name, fill in (("weight", 1), ("bias", 0), ("running_mean", 0),
                       ("running_var", 1)):
      self.register_buffer(name, torch.full((n,), float(fill)))

  def forward(self, x):
    scale = self.weight * (self.running_var + self.eps).rsqrt()
    shift = self.bias - self.running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


class ModulatedDeformConv(nn.Module):
  """The deformable conv's own weights (`.weight`, `.bias`)."""

  def __init__(self, cin, cout, k, stride, padding, groups, bias):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(cout, cin // groups, k, k))
    self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
    self.stride, self.padding = stride, padding
    nn.init.uniform_(self.weight, -(cin * k * k) ** -0.5, (cin * k * k) ** -0.5)

  def forward(self, x, offset, mask):
    return torchvision.ops.deform_conv2d(
        x, offset, self.weight, self.bias, stride=self.stride,
        padding=self.padding, mask=mask)


class DFConv2d(nn.Module):
  """Offset/mask conv (`.offset`, 27 channels for 3x3: 18 offsets then 9
  mask logits) feeding a modulated deformable conv (`.conv`)."""

  def __init__(self, cin, cout, stride=1, groups=1, bias=False):
    super().__init__()
    self.offset = nn.Conv2d(cin, 27, 3, stride, 1)
    self.conv = ModulatedDeformConv(cin, cout, 3, stride, 1, groups, bias)

  def forward(self, x):
    om = self.offset(x)
    return self.conv(x, om[:, :18], om[:, 18:].sigmoid())


class Bottleneck(nn.Module):

  def __init__(self, cin, inner, cout, stride, stride_in_1x1, groups, dcn):
    super().__init__()
    self.downsample = None
    if cin != cout:
      self.downsample = nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), FrozenBatchNorm2d(cout))
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = nn.Conv2d(cin, inner, 1, s1, bias=False)
    self.bn1 = FrozenBatchNorm2d(inner)
    self.conv2 = (DFConv2d(inner, inner, s3, groups) if dcn else
                  nn.Conv2d(inner, inner, 3, s3, 1, groups=groups, bias=False))
    self.bn2 = FrozenBatchNorm2d(inner)
    self.conv3 = nn.Conv2d(inner, cout, 1, bias=False)
    self.bn3 = FrozenBatchNorm2d(cout)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Stem(nn.Module):

  def __init__(self, width):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = FrozenBatchNorm2d(width)

  def forward(self, x):
    return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)


BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ResNet(nn.Module):
  """Stem + layer1..4 (res2..res5); returns C3, C4, C5."""

  def __init__(self, depth, width, stride_in_1x1, groups=1, width_per_group=64,
               dcn_stages=()):
    super().__init__()
    self.stem = Stem(width)
    cin = width
    for i, n in enumerate(BLOCKS[depth]):
      planes = width * 2 ** i
      inner = int(planes * width_per_group / 64) * groups
      blocks = []
      for b in range(n):
        stride = 2 if (i > 0 and b == 0) else 1
        blocks.append(Bottleneck(cin, inner, planes * 4, stride, stride_in_1x1,
                                 groups, i + 2 in dcn_stages))
        cin = planes * 4
      self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))

  def forward(self, x):
    x = self.layer1(self.stem(x))
    c3 = self.layer2(x)
    c4 = self.layer3(c3)
    return [c3, c4, self.layer4(c4)]


def conv_bn_relu6(cin, cout, k, stride, groups=1):
  return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
          nn.BatchNorm2d(cout), nn.ReLU6()]


class InvertedResidual(nn.Module):
  """`conv` = [1x1 expand, BN, ReLU6,] 3x3 depthwise, BN, ReLU6, 1x1
  project, BN; residual when the shape is kept."""

  def __init__(self, cin, cout, stride, expand):
    super().__init__()
    hidden = int(round(cin * expand))
    layers = conv_bn_relu6(cin, hidden, 1, 1) if expand != 1 else []
    layers += conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden)
    layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    self.conv = nn.Sequential(*layers)
    self.residual = stride == 1 and cin == cout

  def forward(self, x):
    return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
  """`features` 0..17 (stem conv_bn, 17 inverted residuals); C3, C4, C5 are
  the outputs of features 6, 13, 17 (32, 96, 320 channels). BatchNorm2d in
  eval mode (epsilon 1e-5)."""

  SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self):
    super().__init__()
    features = [nn.Sequential(*conv_bn_relu6(3, 32, 3, 2))]
    cin = 32
    for t, c, n, s in self.SETTING:
      for i in range(n):
        features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
        cin = c
    self.features = nn.ModuleList(features)

  def forward(self, x):
    out = []
    for i, m in enumerate(self.features):
      x = m(x)
      if i in (6, 13, 17):
        out.append(x)
    return out


class LastLevelP6P7(nn.Module):

  def __init__(self, cin, cout):
    super().__init__()
    self.p6 = nn.Conv2d(cin, cout, 3, 2, 1)
    self.p7 = nn.Conv2d(cout, cout, 3, 2, 1)
    self.use_p5 = cin == cout

  def forward(self, c5, p5):
    p6 = self.p6(p5 if self.use_p5 else c5)
    return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
  """fpn_inner{2,3,4} / fpn_layer{2,3,4} on C3..C5 (input 1, C2, unused)."""

  def __init__(self, in_channels, cout, p6_from_c5):
    super().__init__()
    for idx, cin in enumerate(in_channels, 2):
      self.add_module(f"fpn_inner{idx}", nn.Conv2d(cin, cout, 1))
      self.add_module(f"fpn_layer{idx}", nn.Conv2d(cout, cout, 3, 1, 1))
    self.top_blocks = LastLevelP6P7(in_channels[-1] if p6_from_c5 else cout,
                                    cout)

  def forward(self, feats):
    inner = self.fpn_inner4(feats[2])
    results = [self.fpn_layer4(inner)]
    for idx in (3, 2):
      lateral = getattr(self, f"fpn_inner{idx}")(feats[idx - 2])
      inner = lateral + F.interpolate(inner, size=lateral.shape[-2:],
                                      mode="nearest")
      results.insert(0, getattr(self, f"fpn_layer{idx}")(inner))
    return results + self.top_blocks(feats[2], results[-1])


class Scale(nn.Module):

  def __init__(self):
    super().__init__()
    self.scale = nn.Parameter(torch.ones(1))

  def forward(self, x):
    return x * self.scale


class FCOSHead(nn.Module):

  def __init__(self, channels, num_classes, num_convs=4, dcn=False,
               norm_reg_targets=True, centerness_on_reg=True,
               strides=(8, 16, 32, 64, 128)):
    super().__init__()
    for tower in ("cls_tower", "bbox_tower"):
      layers = []
      for i in range(num_convs):
        layers.append(DFConv2d(channels, channels, bias=True)
                      if dcn and i == num_convs - 1 else
                      nn.Conv2d(channels, channels, 3, 1, 1))
        layers += [nn.GroupNorm(32, channels), nn.ReLU()]
      self.add_module(tower, nn.Sequential(*layers))
    self.cls_logits = nn.Conv2d(channels, num_classes, 3, 1, 1)
    self.bbox_pred = nn.Conv2d(channels, 4, 3, 1, 1)
    self.centerness = nn.Conv2d(channels, 1, 3, 1, 1)
    self.scales = nn.ModuleList([Scale() for _ in strides])
    self.strides = strides
    self.norm_reg_targets = norm_reg_targets
    self.centerness_on_reg = centerness_on_reg

  def forward(self, feats):
    """Per level: class logits, boxes (l, t, r, b) in pixels (eval mode:
    normalised targets times the stride), centerness logits."""
    logits, boxes, ctr = [], [], []
    for l, x in enumerate(feats):
      cls_t, box_t = self.cls_tower(x), self.bbox_tower(x)
      logits.append(self.cls_logits(cls_t))
      ctr.append(self.centerness(box_t if self.centerness_on_reg else cls_t))
      reg = self.scales[l](self.bbox_pred(box_t))
      boxes.append(F.relu(reg) * self.strides[l] if self.norm_reg_targets
                   else torch.exp(reg))
    return logits, boxes, ctr


class GeneralizedRCNN(nn.Module):
  """`backbone.body`, `backbone.fpn`, `rpn.head`: the checkpoint's layout."""

  def __init__(self, depth=50, width=64, fpn_channels=256, num_classes=80,
               stride_in_1x1=True, groups=1, width_per_group=64,
               dcn_stages=(), head_dcn=False, p6_from_c5=False,
               norm_reg_targets=True, centerness_on_reg=True, bn_eps=0.0,
               backbone="resnet"):
    super().__init__()
    self.backbone = nn.Module()
    if backbone == "mobilenet_v2":
      self.backbone.body = MobileNetV2()
      c = [32, 96, 320]
    else:
      self.backbone.body = ResNet(depth, width, stride_in_1x1, groups,
                                  width_per_group, dcn_stages)
      c = [width * 4 * 2 ** i for i in (1, 2, 3)]
    self.backbone.fpn = FPN(c, fpn_channels, p6_from_c5)
    self.rpn = nn.Module()
    self.rpn.head = FCOSHead(fpn_channels, num_classes, dcn=head_dcn,
                             norm_reg_targets=norm_reg_targets,
                             centerness_on_reg=centerness_on_reg)
    for m in self.modules():
      if isinstance(m, FrozenBatchNorm2d):
        m.eps = bn_eps

  def forward(self, x):
    feats = self.backbone.body(x)
    levels = self.backbone.fpn(feats)
    return feats, levels, self.rpn.head(levels)


def locations(h, w, stride):
  """[h * w, 2] (x, y): j * s + s // 2, row-major."""
  ys, xs = torch.meshgrid(torch.arange(0, h * stride, stride),
                          torch.arange(0, w * stride, stride), indexing="ij")
  return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() + stride // 2


def postprocess(head_out, image_sizes, orig_sizes, strides=(8, 16, 32, 64, 128),
                pre_nms_thresh=0.05, pre_nms_top_n=1000, nms_thresh=0.6,
                detections=100):
  """FCOSPostProcessor (eval) per image: -> list of (boxes in original
  pixels, scores, labels starting at 0)."""
  logits, boxes, ctr = head_out
  results = []
  for i, ((h, w), (oh, ow)) in enumerate(zip(image_sizes, orig_sizes)):
    all_boxes, all_scores, all_labels = [], [], []
    for l, s in enumerate(strides):
      c, hl, wl = logits[l].shape[1:]
      prob = logits[l][i].permute(1, 2, 0).reshape(-1, c).sigmoid()
      reg = boxes[l][i].permute(1, 2, 0).reshape(-1, 4)
      centerness = ctr[l][i].reshape(-1).sigmoid()
      candidates = prob > pre_nms_thresh
      n = min(int(candidates.sum()), pre_nms_top_n)
      score = (prob * centerness[:, None])[candidates]
      loc, label = candidates.nonzero(as_tuple=True)
      if len(score) > n:
        score, top = score.topk(n, sorted=False)
        loc, label = loc[top], label[top]
      pts = locations(hl, wl, s)[loc]
      d = reg[loc]
      det = torch.stack([pts[:, 0] - d[:, 0], pts[:, 1] - d[:, 1],
                         pts[:, 0] + d[:, 2], pts[:, 1] + d[:, 3]], 1)
      det[:, 0::2] = det[:, 0::2].clamp(0, w)
      det[:, 1::2] = det[:, 1::2].clamp(0, h)
      all_boxes.append(det)
      all_scores.append(score.sqrt())
      all_labels.append(label)
    det, score, label = (torch.cat(t) for t in (all_boxes, all_scores,
                                                all_labels))
    keep = torchvision.ops.batched_nms(det, score, label, nms_thresh)
    det, score, label = det[keep], score[keep], label[keep]
    if len(score) > detections:  # Keep scores >= the 100th best.
      cut = torch.kthvalue(score, len(score) - detections + 1).values
      keep = score >= cut
      det, score, label = det[keep], score[keep], label[keep]
    ratio = torch.tensor([ow / w, oh / h, ow / w, oh / h])
    results.append((det * ratio, score, label))
  return results
