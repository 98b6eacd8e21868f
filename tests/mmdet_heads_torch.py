"""mmdetection's GFL detector restated in PyTorch for the converter's parity
tests: written from reading open-mmlab/mmdetection (necks/fpn.py,
dense_heads/gfl_head.py, mmcv's ConvModule and Scale, the post-processing of
BaseDenseHead `_predict_by_feat_single` / `_bbox_post_process` with
`filter_scores_and_topk`, distance2bbox), with its module names, so
`state_dict()` has the checkpoint's names and shapes. Any width; eval only.

The ResNet is tests/official_fcos_torch.py's with the stride in the 3x3
(mmdetection's style "pytorch") and BatchNorm epsilon 1e-5 (BatchNorm2d in
eval mode), renamed to mmdetection's `backbone.conv1`, `backbone.bn1`,
`backbone.layer1.0...` (torchvision's names); in `dcn_stages` each 3x3 is
mmcv's `DCN` (DeformConv2dPack: DCN v1, no mask, fallback_on_stride=False).

VFNet: the same backbone and FPN (relu_before_extra_convs=True) with
tests/vfnet_torch.py's VFNetHead (its mdconv models: mmcv's DCNv2,
ModulatedDeformConv2dPack, in res3-res5 and as the towers' last conv); its test-mode boxes are the refined ones
(VFNetHead.forward_single returns cls_score, bbox_pred_refine out of
training), decoded from the points j * s (anchor_center_offset 0, use_atss).

TOOD: the same backbone and FPN (no ReLU before P7) with
tests/tood_torch.py's TOODHead (anchor_free, or anchor_based: DeltaXYWH
deltas decoded from the 8-stride anchor before the resampling); `tood_state_dict` renames its
modules to mmdetection's (TaskDecomposition's reduction_conv is a
ConvModule: reduction_conv.conv, reduction_conv.gn; scales are mmcv Scales).
Its post-processing (TOODHead._get_bboxes_single) takes the scores as they
are (probabilities), the boxes as bbox_pred * stride, and clips nothing.

ATSS: the same backbone and FPN (no ReLU before P7) with ATSSHead
(dense_heads/atss_head.py: GN towers, atss_cls, atss_reg scaled by the
level's Scale with no activation, atss_centerness on the box tower), its
anchors (AnchorGenerator: octave_base_scale 8, one ratio, center_offset 0),
DeltaXYWHBBoxCoder.decode (`delta2bbox`, means 0, stds 0.1, 0.1, 0.2, 0.2,
wh_ratio_clip 16/1000, clipped to the image) and its post-processing
(`postprocess_atss`: the candidates by prob, then score = prob x
sigmoid(centre-ness), the score_factors of _bbox_post_process).
"""

import math

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import official_fcos_torch as official


class DeformConv2dPack(nn.Module):
  """mmcv's DCN v1: its own `weight` (no bias) and `conv_offset`, a conv
  with bias giving 2 x 9 offsets, (dy, dx) per tap."""

  def __init__(self, cin, cout, stride, groups):
    super().__init__()
    self.weight = nn.Parameter(torch.empty(cout, cin // groups, 3, 3))
    nn.init.uniform_(self.weight, -(cin * 9) ** -0.5, (cin * 9) ** -0.5)
    self.conv_offset = nn.Conv2d(cin, 18, 3, stride, 1)
    self.stride = stride

  def forward(self, x):
    return torchvision.ops.deform_conv2d(
        x, self.conv_offset(x), self.weight, None, stride=self.stride,
        padding=1)


class ModulatedDeformConv2dPack(DeformConv2dPack):
  """mmcv's DCNv2 (ModulatedDeformConv2dPack, bias=False as in ResNet's
  conv2 and a ConvModule with GN): `conv_offset` gives 27 channels, o1, o2,
  mask = chunk(3); offset = cat(o1, o2), mask = sigmoid."""

  def __init__(self, cin, cout, stride, groups):
    super().__init__(cin, cout, stride, groups)
    self.conv_offset = nn.Conv2d(cin, 27, 3, stride, 1)

  def forward(self, x):
    o1, o2, mask = torch.chunk(self.conv_offset(x), 3, dim=1)
    return torchvision.ops.deform_conv2d(
        x, torch.cat((o1, o2), dim=1), self.weight, None, stride=self.stride,
        padding=1, mask=torch.sigmoid(mask))


class ResNet(nn.Module):
  """mmdetection's ResNet / ResNeXt (style "pytorch", norm_eval): conv1,
  bn1, layer1..4; returns C3, C4, C5."""

  def __init__(self, depth=50, width=64, groups=1, width_per_group=64,
               dcn_stages=(), dcn_modulated=False):
    super().__init__()
    dcn = ModulatedDeformConv2dPack if dcn_modulated else DeformConv2dPack
    body = official.ResNet(depth, width, stride_in_1x1=False, groups=groups,
                           width_per_group=width_per_group)
    self.conv1, self.bn1 = body.stem.conv1, body.stem.bn1
    for i in range(1, 5):
      layer = getattr(body, f"layer{i}")
      if i + 1 in dcn_stages:
        for block in layer:
          c = block.conv2
          block.conv2 = dcn(c.in_channels, c.out_channels, c.stride[0],
                            c.groups)
      self.add_module(f"layer{i}", layer)
    for m in self.modules():
      if isinstance(m, official.FrozenBatchNorm2d):
        m.eps = 1e-5  # nn.BatchNorm2d's, in eval mode.

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    c3 = self.layer2(self.layer1(x))
    c4 = self.layer3(c3)
    return [c3, c4, self.layer4(c4)]


class ConvModule(nn.Module):
  """mmcv's ConvModule: `conv` (no bias when a norm follows), `gn`, ReLU;
  without norm and activation just the conv with its bias."""

  def __init__(self, cin, cout, k, stride=1, norm=False, act=False):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=not norm)
    if norm:
      self.gn = nn.GroupNorm(32, cout)
    self.norm, self.act = norm, act

  def forward(self, x):
    x = self.conv(x)
    if self.norm:
      x = self.gn(x)
    return F.relu(x) if self.act else x


class FPN(nn.Module):
  """start_level=1 (C3..C5), add_extra_convs="on_output", num_outs=5:
  P6 = fpn_convs[3](P5), P7 = fpn_convs[4](P6), with a ReLU on P6 before
  it only with relu_before_extra_convs (GFL: False, VFNet: True)."""

  def __init__(self, in_channels, cout, num_outs=5,
               relu_before_extra_convs=False):
    super().__init__()
    self.relu_before_extra_convs = relu_before_extra_convs
    self.lateral_convs = nn.ModuleList(
        [ConvModule(c, cout, 1) for c in in_channels])
    self.fpn_convs = nn.ModuleList(
        [ConvModule(cout, cout, 3) for _ in in_channels] +
        [ConvModule(cout, cout, 3, stride=2)
         for _ in range(num_outs - len(in_channels))])

  def forward(self, inputs):
    laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
    for i in range(len(laterals) - 1, 0, -1):
      laterals[i - 1] = laterals[i - 1] + F.interpolate(
          laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
    outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
    outs.append(self.fpn_convs[len(laterals)](outs[-1]))  # on_output
    for i in range(len(laterals) + 1, len(self.fpn_convs)):
      prev = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
      outs.append(self.fpn_convs[i](prev))
    return outs


class Scale(nn.Module):
  """mmcv's Scale: a 0-d learnable factor."""

  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

  def forward(self, x):
    return x * self.scale


class Integral(nn.Module):
  """softmax over reg_max + 1 bins, expectation with `project` = 0..reg_max."""

  def __init__(self, reg_max=16):
    super().__init__()
    self.reg_max = reg_max
    self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

  def forward(self, x):
    x = F.softmax(x.reshape(-1, self.reg_max + 1), dim=1)
    return F.linear(x, self.project.type_as(x)).reshape(-1, 4)


def _towers(channels, stacked_convs):
  """AnchorHead's cls_convs and reg_convs: GN ConvModules (conv without
  bias, GroupNorm, ReLU)."""
  return tuple(nn.ModuleList(
      [ConvModule(channels, channels, 3, norm=True, act=True)
       for _ in range(stacked_convs)]) for _ in range(2))


class GFLHead(nn.Module):

  def __init__(self, num_classes, channels, stacked_convs=4, reg_max=16,
               strides=(8, 16, 32, 64, 128)):
    super().__init__()
    self.cls_convs, self.reg_convs = _towers(channels, stacked_convs)
    self.gfl_cls = nn.Conv2d(channels, num_classes, 3, padding=1)
    self.gfl_reg = nn.Conv2d(channels, 4 * (reg_max + 1), 3, padding=1)
    self.scales = nn.ModuleList([Scale(1.0) for _ in strides])
    self.integral = Integral(reg_max)
    self.strides, self.reg_max = strides, reg_max

  def forward(self, feats):
    """Per level: class logits [B, C, H, W], distribution logits
    [B, 4 * (reg_max + 1), H, W] (scaled by the level's Scale)."""
    cls_scores, bbox_preds = [], []
    for x, scale in zip(feats, self.scales):
      cls_feat, reg_feat = x, x
      for conv in self.cls_convs:
        cls_feat = conv(cls_feat)
      for conv in self.reg_convs:
        reg_feat = conv(reg_feat)
      cls_scores.append(self.gfl_cls(cls_feat))
      bbox_preds.append(scale(self.gfl_reg(reg_feat)).float())
    return cls_scores, bbox_preds


class GFL(nn.Module):
  """`backbone`, `neck`, `bbox_head`: the checkpoint's layout."""

  def __init__(self, depth=50, width=64, groups=1, width_per_group=64,
               fpn_channels=256, num_classes=80, reg_max=16, dcn_stages=()):
    super().__init__()
    self.backbone = ResNet(depth, width, groups, width_per_group, dcn_stages)
    self.neck = FPN([width * 4 * 2 ** i for i in (1, 2, 3)], fpn_channels)
    self.bbox_head = GFLHead(num_classes, fpn_channels, reg_max=reg_max)

  def forward(self, x):
    return self.bbox_head(self.neck(self.backbone(x)))


class VFNet(nn.Module):
  """`backbone`, `neck`, `bbox_head` (tests/vfnet_torch.py's VFNetHead,
  3 tower convs): the checkpoint's layout. Per level (cls_score,
  bbox_pred, bbox_pred_refine), NCHW."""

  def __init__(self, depth=50, width=64, groups=1, width_per_group=64,
               fpn_channels=256, num_classes=80, mdconv=False):
    super().__init__()
    import vfnet_torch  # pylint: disable=import-outside-toplevel
    self.backbone = ResNet(depth, width, groups, width_per_group,
                           (3, 4, 5) if mdconv else (), dcn_modulated=True)
    self.neck = FPN([width * 4 * 2 ** i for i in (1, 2, 3)], fpn_channels,
                    relu_before_extra_convs=True)
    self.bbox_head = vfnet_torch.VFNetHead(num_classes, fpn_channels,
                                           stacked_convs=3)
    if mdconv:  # dcn_on_last_conv: the towers' last ConvModule is DCNv2.
      for tower in (self.bbox_head.cls_convs, self.bbox_head.reg_convs):
        tower[-1].conv = ModulatedDeformConv2dPack(
            fpn_channels, fpn_channels, 1, 1)

  def forward(self, x):
    feats = self.neck(self.backbone(x))
    return [self.bbox_head.forward_single(f, l) for l, f in enumerate(feats)]


class TOOD(nn.Module):
  """`backbone`, `neck`, `bbox_head` (tests/tood_torch.py's TOODHead, 6
  inter convs; the dconv models: DCNv2 in `dcn_stages` and the first
  `num_dcn` inter convs). Per level (cls_score probabilities, bbox_pred boxes in
  strides), NCHW."""

  def __init__(self, depth=50, width=64, groups=1, width_per_group=64,
               fpn_channels=256, num_classes=80, anchor_type="anchor_free",
               dcn_stages=(), num_dcn=0):
    super().__init__()
    import tood_torch  # pylint: disable=import-outside-toplevel
    self.backbone = ResNet(depth, width, groups, width_per_group, dcn_stages,
                           dcn_modulated=True)
    self.neck = FPN([width * 4 * 2 ** i for i in (1, 2, 3)], fpn_channels)
    self.bbox_head = tood_torch.TOODHead(num_classes, fpn_channels, 6, 32,
                                         anchor_type=anchor_type,
                                         num_dcn=num_dcn)

  def forward(self, x):
    feats = self.neck(self.backbone(x))
    return [self.bbox_head.forward_level(f, l) for l, f in enumerate(feats)]


def tood_state_dict(model):
  """`model.state_dict()` under mmdetection's TOOD names."""
  import re  # pylint: disable=import-outside-toplevel
  out = {}
  for k, v in model.state_dict().items():
    k = re.sub(r"(_decomp)\.reduction_conv\.weight$",
               r"\1.reduction_conv.conv.weight", k)
    k = re.sub(r"(_decomp)\.gn\.", r"\1.reduction_conv.gn.", k)
    k = re.sub(r"^(bbox_head\.scales\.\d+)$", r"\1.scale", k)
    out[k] = v
  return out


def postprocess_tood(levels, model, image_sizes, orig_sizes, clip=False,
                     **kw):
  """TOODHead's test_cfg post-processing; `clip` clamps the boxes to the
  resized image first (fcos_jax does, mmdetection does not)."""
  strides = model.bbox_head.strides

  def boxes(level, rows, centers, hw):
    del centers
    b = rows * strides[level]
    if clip:
      b = torch.stack([b[:, 0].clamp(0, hw[1]), b[:, 1].clamp(0, hw[0]),
                       b[:, 2].clamp(0, hw[1]), b[:, 3].clamp(0, hw[0])], -1)
    return b

  return postprocess_distances(
      [l[0] for l in levels], [l[1] for l in levels], None, strides,
      image_sizes, orig_sizes, activated=True, decode=boxes, **kw)


def anchor_boxes(h, w, stride, octave_base_scale=8):
  """[h * w, 4] AnchorGenerator's anchors (ratio 1, scales_per_octave 1,
  center_offset 0): the base anchor, an octave_base_scale * stride square
  centred on (0, 0), shifted by (j s, i s), row-major."""
  side = stride * octave_base_scale
  base = torch.tensor([-0.5 * side, -0.5 * side, 0.5 * side, 0.5 * side])
  ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride,
                          indexing="ij")
  xs, ys = xs.reshape(-1).float(), ys.reshape(-1).float()
  return base[None] + torch.stack([xs, ys, xs, ys], 1)


def anchor_centers(h, w, stride):
  """[h * w, 2] (x, y) of AnchorGenerator's anchors (center_offset 0,
  octave_base_scale 8: an 8 s square centred on (j s, i s)), row-major:
  the centre of each anchor box."""
  boxes = anchor_boxes(h, w, stride)
  return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2,
                      (boxes[:, 1] + boxes[:, 3]) / 2], 1)


def delta2bbox(rois, deltas, stds=(0.1, 0.1, 0.2, 0.2), max_shape=None,
               wh_ratio_clip=16 / 1000):
  """DeltaXYWHBBoxCoder.decode (means 0, add_ctr_clamp False): anchors
  [N, 4] and deltas [N, 4] -> boxes [N, 4], clipped to max_shape (h, w)."""
  denorm = deltas * deltas.new_tensor(stds).view(1, -1)
  dxy, dwh = denorm[:, :2], denorm[:, 2:]
  pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
  pwh = rois[:, 2:] - rois[:, :2]
  max_ratio = abs(math.log(wh_ratio_clip))
  dwh = dwh.clamp(min=-max_ratio, max=max_ratio)
  gxy = pxy + pwh * dxy
  gwh = pwh * dwh.exp()
  boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], -1)
  if max_shape is not None:
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, max_shape[1])
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, max_shape[0])
  return boxes


class ATSSHead(nn.Module):
  """mmdetection's ATSSHead (one anchor per location)."""

  def __init__(self, num_classes, channels, stacked_convs=4,
               strides=(8, 16, 32, 64, 128)):
    super().__init__()
    self.cls_convs, self.reg_convs = _towers(channels, stacked_convs)
    self.atss_cls = nn.Conv2d(channels, num_classes, 3, padding=1)
    self.atss_reg = nn.Conv2d(channels, 4, 3, padding=1)
    self.atss_centerness = nn.Conv2d(channels, 1, 3, padding=1)
    self.scales = nn.ModuleList([Scale(1.0) for _ in strides])
    self.strides = strides

  def forward(self, feats):
    """Per level (cls_score, bbox_pred deltas, centerness logits), NCHW."""
    out = []
    for x, scale in zip(feats, self.scales):
      cls_feat, reg_feat = x, x
      for conv in self.cls_convs:
        cls_feat = conv(cls_feat)
      for conv in self.reg_convs:
        reg_feat = conv(reg_feat)
      out.append((self.atss_cls(cls_feat),
                  scale(self.atss_reg(reg_feat)).float(),
                  self.atss_centerness(reg_feat)))
    return out


class ATSS(nn.Module):
  """`backbone`, `neck` (no ReLU before P7), `bbox_head`: the checkpoint's
  layout."""

  def __init__(self, depth=50, width=64, fpn_channels=256, num_classes=80):
    super().__init__()
    self.backbone = ResNet(depth, width)
    self.neck = FPN([width * 4 * 2 ** i for i in (1, 2, 3)], fpn_channels)
    self.bbox_head = ATSSHead(num_classes, fpn_channels)

  def forward(self, x):
    return self.bbox_head(self.neck(self.backbone(x)))


def postprocess_atss(levels, model, image_sizes, orig_sizes, **kw):
  """ATSSHead's test_cfg post-processing: candidates by prob, boxes
  decoded from the anchors and clipped, score prob x sigmoid(centerness)."""
  strides = model.bbox_head.strides

  def boxes(level, rows, centers, hw):
    half = 4 * strides[level]
    anchors = torch.cat([centers - half, centers + half], 1)
    return delta2bbox(anchors, rows, max_shape=hw)

  return postprocess_distances(
      [l[0] for l in levels], [l[1] for l in levels], None, strides,
      image_sizes, orig_sizes, decode=boxes,
      score_factors=[l[2] for l in levels], **kw)


def distance2bbox(points, distance, max_shape):
  """Centres and (l, t, r, b) -> boxes, clamped to [0, w] x [0, h]."""
  x1 = (points[:, 0] - distance[:, 0]).clamp(0, max_shape[1])
  y1 = (points[:, 1] - distance[:, 1]).clamp(0, max_shape[0])
  x2 = (points[:, 0] + distance[:, 2]).clamp(0, max_shape[1])
  y2 = (points[:, 1] + distance[:, 3]).clamp(0, max_shape[0])
  return torch.stack([x1, y1, x2, y2], -1)


def postprocess(head, model, image_sizes, orig_sizes, score_thr=0.05,
                nms_pre=1000, iou_threshold=0.6, max_per_img=100,
                min_bbox_size=0):
  """GFLHead's test_cfg post-processing per image -> list of (boxes in
  original pixels, scores, labels from 0)."""
  cls_scores, bbox_preds = head
  gfl = model.bbox_head

  def distances(level, reg):  # The Integral's expectation, in pixels.
    return gfl.integral(reg) * gfl.strides[level]

  return postprocess_distances(cls_scores, bbox_preds, distances, gfl.strides,
                               image_sizes, orig_sizes, score_thr, nms_pre,
                               iou_threshold, max_per_img, min_bbox_size)


def postprocess_vfnet(levels, model, image_sizes, orig_sizes, **kw):
  """VFNetHead's test_cfg post-processing (its refined boxes, in pixels)."""
  return postprocess_distances(
      [l[0] for l in levels], [l[2] for l in levels], lambda _, reg: reg,
      model.bbox_head.strides, image_sizes, orig_sizes, **kw)


def postprocess_distances(cls_scores, bbox_preds, distances, strides,
                          image_sizes, orig_sizes, score_thr=0.05,
                          nms_pre=1000, iou_threshold=0.6, max_per_img=100,
                          min_bbox_size=0, activated=False, decode=None,
                          score_factors=None):
  """BaseDenseHead's post-processing per image: `distances(level, rows)`
  turns the selected rows of a level's box output into (l, t, r, b)
  pixels, decoded from the points and clipped to the image; or
  `decode(level, rows, centers, (h, w))` gives the boxes. `activated`:
  the class outputs are probabilities already (no sigmoid).
  `score_factors`: per level [B, 1, H, W] logits whose sigmoid multiplies
  the selected candidates' scores (after the threshold and top-k)."""
  results = []
  for i, ((h, w), (oh, ow)) in enumerate(zip(image_sizes, orig_sizes)):
    all_boxes, all_scores, all_labels = [], [], []
    for level, (cls_score, bbox_pred, stride) in enumerate(
        zip(cls_scores, bbox_preds, strides)):
      c, hl, wl = cls_score.shape[1:]
      scores = cls_score[i].permute(1, 2, 0).reshape(-1, c)
      if not activated:
        scores = scores.sigmoid()
      reg = bbox_pred[i].permute(1, 2, 0).reshape(-1, bbox_pred.shape[1])
      # filter_scores_and_topk: every (location, class) above score_thr,
      # the best nms_pre of them.
      valid = scores > score_thr
      kept = scores[valid]
      valid_idxs = torch.nonzero(valid)
      kept, order = kept.sort(descending=True)
      kept, order = kept[:nms_pre], order[:nms_pre]
      loc, labels = valid_idxs[order].unbind(1)
      centers = anchor_centers(hl, wl, stride)[loc]
      if decode is not None:
        all_boxes.append(decode(level, reg[loc], centers, (h, w)))
      else:
        all_boxes.append(distance2bbox(centers, distances(level, reg[loc]),
                                       (h, w)))
      if score_factors is not None:
        kept = kept * score_factors[level][i].reshape(-1).sigmoid()[loc]
      all_scores.append(kept)
      all_labels.append(labels)
    boxes, scores, labels = (torch.cat(t) for t in (all_boxes, all_scores,
                                                    all_labels))
    # _bbox_post_process: rescale (scale_factor = resized / original),
    # drop boxes without area (min_bbox_size 0), class-wise NMS.
    boxes = boxes / torch.tensor([w / ow, h / oh, w / ow, h / oh])
    if min_bbox_size >= 0:
      bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
      keep = (bw > min_bbox_size) & (bh > min_bbox_size)
      boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = torchvision.ops.batched_nms(boxes, scores, labels, iou_threshold)
    keep = keep[:max_per_img]
    results.append((boxes[keep], scores[keep], labels[keep]))
  return results
