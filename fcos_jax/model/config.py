"""FCOS model configuration, composed of parts, and the named presets.

`ModelConfig` is a frozen dataclass (hashable: a static argument of
`jax.jit`). Its own fields are the architecture: what the parameters are and
what they compute. The other choices are parts, each a small frozen config
that the functions reading it take:

  quality    the quality branch (centre-ness), a named choice (`QUALITY`);
  assign     the assignment rule (targets.py), a named choice (`ASSIGNERS`);
  loss       the training loss (losses.py), a named choice (`LOSSES`);
  inference  candidate threshold, top-k, NMS, detections (postprocess.py);
  numerics   compute dtype and how training computes kernel gradients;
  box        what the box branch regresses (`BOXES`): FCOS's distances, or
             DeltaXYWH deltas from a square anchor (mmdetection's ATSS).

A new assigner, quality branch or loss is a new small class registered by
its `name` beside the FCOS one; nothing else here changes. On resume the
part decides what may change (fcos_jax/run/record.py): the architecture, the
quality branch and the box never, `assign` and `loss` with allow_config_change,
`inference` and `numerics` freely.

The presets are the published variants (see docs/algorithm.md):

- `official`   : FCOS_imprv_R_50_FPN_1x (tianzhi0549/FCOS), 38.7 AP.
- `paper`      : FCOS_R_50_FPN_1x as in the ICCV 2019 paper, 37.1 AP.
- `torchvision`: torchvision's `fcos_resnet50_fpn`, 39.2 AP.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from fcos_jax.errors import ConfigError

INF = math.inf

# Per-preset input normalisation: caffe/MSRA weights take BGR in 0..255 minus
# the mean; torchvision weights take RGB in 0..1 with ImageNet mean and std.
CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)


def _as_tuple(value):
  """ConfigDict and JSON give lists; the frozen config wants tuples."""
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuple(v) for v in value)
  return value


def _check_choice(cfg, name, choices):
  value = getattr(cfg, name)
  if value not in choices:
    raise ConfigError(
        f"{type(cfg).__name__}.{name}={value!r}: must be one of {choices}.")


# --- Parts: each a named choice or a group of settings ---------------------


@dataclasses.dataclass(frozen=True)
class CenternessQuality:
  """FCOS's centre-ness branch: one logit per location, trained with BCE
  against sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)), multiplied into the
  class score at inference."""

  name: str = "centerness"
  on: str = "reg"  # The tower it sits on: "reg" (imprv) or "cls" (paper).

  def __post_init__(self):
    _check_choice(self, "on", ("reg", "cls"))


@dataclasses.dataclass(frozen=True)
class IoUQuality:
  """AdelaiDet's IoU quality branch (MODEL.FCOS.BOX_QUALITY "iou"): the
  same one-logit branch, trained with BCE on positives (over N_pos) against
  the IoU of the detached decoded box with its target; its sigmoid takes
  centre-ness's place in the score at inference. AdelaiDet then leaves the
  regression loss unweighted (over N_pos): the `iou` preset sets
  reg_weighting="none"."""

  name: str = "iou"
  on: str = "reg"  # The tower it sits on: "reg" (AdelaiDet) or "cls".

  def __post_init__(self):
    _check_choice(self, "on", ("reg", "cls"))


@dataclasses.dataclass(frozen=True)
class FCOSAssign:
  """FCOS's assignment (core/targets.py): a location inside a box (or its
  centre region) whose largest distance lies in its level's size range;
  the smallest such box wins."""

  name: str = "fcos"
  # Regression range of each level, on m = max(l*, t*, r*, b*) in pixels.
  size_ranges: tuple[tuple[float, float], ...] = (
      (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))
  size_range_inclusive: bool = True  # lo <= m <= hi (official) or lo < m < hi.
  center_sampling_radius: float = 1.5  # In strides; 0 disables it.

  def __post_init__(self):
    if self.center_sampling_radius < 0:
      raise ConfigError(
          f"model.assign.center_sampling_radius={self.center_sampling_radius}:"
          " must be >= 0 (0 disables centre sampling; official: 1.5).")


@dataclasses.dataclass(frozen=True)
class ATSSAssign:
  """ATSS (Zhang et al. 2020, core/atss.py): each box's k nearest
  locations per level (centre distance) are candidates; those whose square
  anchor (anchor_scale strides wide, centred on the location) has IoU with
  the box >= mean + std of the candidates' IoUs, and whose centre lies
  inside the box, are positive; a location positive for several boxes takes
  the one of highest IoU. No size ranges and no centre sampling."""

  name: str = "atss"
  topk: int = 9  # Candidates per level and box.
  anchor_scale: float = 8.0  # Anchor side in strides (ATSS: 8 s).

  def __post_init__(self):
    if self.topk < 1 or self.anchor_scale <= 0:
      raise ConfigError(
          f"model.assign: topk={self.topk} and anchor_scale="
          f"{self.anchor_scale} must be positive (ATSS: 9 and 8).")


@dataclasses.dataclass(frozen=True)
class FCOSLoss:
  """FCOS's loss (core/losses.py): sigmoid focal loss, an IoU-family box
  loss and the quality branch's BCE."""

  name: str = "fcos"
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  reg_loss: str = "giou"  # "giou", "iou" (-log IoU) or "linear_iou".
  reg_weighting: str = "centerness"  # "centerness" or "none" (/ num_pos).
  iou_smooth: float = 1.0  # IoU = (I + s) / (U + s) in the reg loss: 1 in the
  # official code (keeps -log IoU finite), 0 in torchvision.

  def __post_init__(self):
    _check_choice(self, "reg_loss", ("giou", "iou", "linear_iou"))
    _check_choice(self, "reg_weighting", ("centerness", "none"))


@dataclasses.dataclass(frozen=True)
class GFLJointQuality:
  """GFL's joint representation (Li et al. 2020; mmdetection GFLHead): no
  separate quality branch, the class score itself is trained (QFL) towards
  the IoU of the decoded box with its target; the box branch gives a
  distribution over 0..reg_max (stride units) for each side, 4 x (reg_max +
  1) logits, decoded by its expectation (the Integral). Needs loss `gfl`."""

  name: str = "gfl_joint"
  reg_max: int = 16  # The largest distance of the set {0, ..., reg_max}.

  def __post_init__(self):
    if self.reg_max < 1:
      raise ConfigError(
          f"model.quality.reg_max={self.reg_max}: must be >= 1 (GFL: 16).")


@dataclasses.dataclass(frozen=True)
class GFLLoss:
  """GFL's loss (core/gfl.py): Quality Focal Loss on the joint class score,
  GIoU and Distribution Focal Loss on the positives, both weighted by the
  positive's best class probability (mmdetection's GFLHead). Needs quality
  `gfl_joint`."""

  name: str = "gfl"
  qfl_beta: float = 2.0  # QFL's modulating exponent on |IoU - p|.
  giou_weight: float = 2.0  # loss_bbox's weight (GIoULoss loss_weight).
  dfl_weight: float = 0.25  # loss_dfl's weight.

  def __post_init__(self):
    if self.qfl_beta < 0 or self.giou_weight < 0 or self.dfl_weight < 0:
      raise ConfigError(
          f"model.loss: qfl_beta={self.qfl_beta}, giou_weight="
          f"{self.giou_weight}, dfl_weight={self.dfl_weight} must be >= 0.")


@dataclasses.dataclass(frozen=True)
class ATSSLoss:
  """The ATSS repository's loss: FCOS's terms (focal, GIoU weighted by the
  centre-ness targets, centre-ness BCE) with the regression term scaled by
  reg_weight (MODEL.ATSS.REG_LOSS_WEIGHT = 2)."""

  name: str = "atss"
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  reg_loss: str = "giou"
  reg_weighting: str = "centerness"
  iou_smooth: float = 0.0  # ATSS's GIoULoss: I / (U + 1e-7), no +1.
  reg_weight: float = 2.0

  def __post_init__(self):
    _check_choice(self, "reg_loss", ("giou", "iou", "linear_iou"))
    _check_choice(self, "reg_weighting", ("centerness", "none"))


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
  """Candidates, NMS and detections (core/postprocess.py)."""

  score_thresh: float = 0.05
  score_thresh_on: str = "prob"  # "prob": on sigmoid(cls) (official);
  # "sqrt": on sqrt(prob * ctr) (torchvision).
  pre_nms_topk: int = 1000  # Per level.
  nms_iou: float = 0.6
  max_detections: int = 100
  # The reported score with a quality branch: "sqrt": sqrt(prob * ctr)
  # (official FCOS, torchvision); "product": prob * ctr (mmdetection's
  # ATSS, FCOS). The same ranking, hence the same detections.
  score_combine: str = "sqrt"
  # Boxes are clipped to the resized image (then to the original), as the
  # official FCOS, torchvision and mmdetection's FCOS-family heads do;
  # False keeps them as decoded (mmdetection's TOOD).
  clip_boxes: bool = True
  # Candidates whose width or height is <= min_box_size pixels (after any
  # clipping) are dropped before NMS: 0 drops the empty boxes, as
  # mmdetection's min_bbox_size=0 does; -1 keeps every box (official FCOS).
  min_box_size: float = -1.0

  def __post_init__(self):
    _check_choice(self, "score_thresh_on", ("prob", "sqrt"))
    _check_choice(self, "score_combine", ("sqrt", "product"))
    if not (self.min_box_size == -1.0 or self.min_box_size >= 0):
      raise ConfigError(
          f"model.inference.min_box_size={self.min_box_size}: give -1 (keep "
          "every box) or a size >= 0 in pixels (0: drop empty boxes).")


@dataclasses.dataclass(frozen=True)
class Numerics:
  """How the same model is computed (same values to rounding)."""

  dtype: str = "float32"  # Compute dtype: "float32" or "bfloat16".
  # Training's conv kernel gradients: "auto" = as GEMMs for wide convs on
  # the CPU backend (XLA:CPU's own is slow, fcos_jax/train/cpu_conv.py),
  # XLA's elsewhere; "gemm" (every conv) / "xla" force one. Same result to
  # float32 rounding.
  conv_kernel_grad: str = "auto"

  def __post_init__(self):
    _check_choice(self, "dtype", ("float32", "bfloat16"))
    _check_choice(self, "conv_kernel_grad", ("auto", "gemm", "xla"))


# The named choices: a new one is a class above, registered here by name.
QUALITY = {"centerness": CenternessQuality}
ASSIGNERS = {"fcos": FCOSAssign}
LOSSES = {"fcos": FCOSLoss}
QUALITY["iou"] = IoUQuality
ASSIGNERS["atss"] = ATSSAssign
LOSSES["atss"] = ATSSLoss
# Each part: its field in ModelConfig, its choices (by `name`) or its class.
PARTS = {"quality": QUALITY, "assign": ASSIGNERS, "loss": LOSSES,
         "inference": InferenceConfig, "numerics": Numerics}
# What may change when a run resumes, by part (fcos_jax/run/record.py);
# every field of ModelConfig itself is architecture and may not.
RESUME_POLICY = {"quality": "architecture", "assign": "training",
                 "loss": "training", "inference": "free", "numerics": "free"}
# GFL (Generalized Focal Loss): its joint quality and its loss, chosen together.
QUALITY["gfl_joint"] = GFLJointQuality
LOSSES["gfl"] = GFLLoss


@dataclasses.dataclass(frozen=True)
class VFNetQuality:
  """VarifocalNet's head (Zhang et al. 2021; mmdetection VFNetHead): no
  separate quality branch, the class score is IoU-aware (trained by VFL
  towards the IoU of the refined box); an initial box exp(scale * x) *
  reg_denom from one more GN conv on the box tower, star-shaped deformable
  convs (offsets from the initial box) on both towers, a refined box =
  exp(scale_refine * x) * (initial box, detached). Needs loss `vfnet`
  (fcos_jax/model/vfnet_head.py)."""

  name: str = "vfnet"
  gradient_mul: float = 0.1  # Share of the offsets' gradient that reaches
  # the initial box.
  bbox_norm: str = "reg_denom"  # The initial box's unit: "reg_denom" = 8
  # strides (mmdetection's regress-range ends 64..512, 1024 for P7) or
  # "stride".

  def __post_init__(self):
    _check_choice(self, "bbox_norm", ("reg_denom", "stride"))
    if not 0.0 <= self.gradient_mul <= 1.0:
      raise ConfigError(
          f"model.quality.gradient_mul={self.gradient_mul}: must be in "
          "[0, 1] (VFNet: 0.1).")


@dataclasses.dataclass(frozen=True)
class VFNetLoss:
  """VFNet's loss (core/vfnet.py): Varifocal Loss on the class scores with
  the refined box's IoU as the positives' target, over num_pos; GIoU on the
  initial and on the refined box, each weighted by its own IoU with the
  target and normalised by the sum of those IoUs (mmdetection's
  VFNetHead.loss_by_feat). Needs quality `vfnet`."""

  name: str = "vfnet"
  vfl_alpha: float = 0.75  # Weight of the negatives' term.
  vfl_gamma: float = 2.0  # Negatives' modulating exponent on |p - 0|.
  iou_weighted: bool = True  # Positives' BCE weighted by their IoU target.
  giou_weight: float = 1.5  # loss_bbox (initial box).
  giou_refine_weight: float = 2.0  # loss_bbox_refine (refined box).

  def __post_init__(self):
    if min(self.vfl_alpha, self.vfl_gamma, self.giou_weight,
           self.giou_refine_weight) < 0:
      raise ConfigError(
          f"model.loss: vfl_alpha={self.vfl_alpha}, vfl_gamma="
          f"{self.vfl_gamma}, giou_weight={self.giou_weight}, "
          f"giou_refine_weight={self.giou_refine_weight} must be >= 0.")


# VFNet: its head and its loss, chosen together.
QUALITY["vfnet"] = VFNetQuality
LOSSES["vfnet"] = VFNetLoss


@dataclasses.dataclass(frozen=True)
class TOODQuality:
  """TOOD's T-head (Feng et al. 2021; mmdetection TOODHead, anchor_free):
  `head_convs` shared GN convs (inter_convs, TOOD: 6) whose outputs are
  stacked; a task decomposition (layer attention) for each task; the class
  score sqrt(sigmoid(cls) * sigmoid(cls_prob)) and a box exp(x) * scale
  (strides) resampled at learned offsets, one per side. No separate
  quality branch: the score is trained towards the alignment metric.
  Needs assign `tal` and loss `tood` (fcos_jax/model/tood_head.py)."""

  name: str = "tood"
  la_down_rate: int = 8  # Layer attention's hidden width is (head_convs
  # * fpn_channels) // (la_down_rate * head_convs): mmdetection passes
  # stacked_convs * 8 as its la_down_rate.
  num_dcn: int = 0  # The first num_dcn inter convs are DCNv2 (modulated,
  # no bias before GN) with `dcn_groups` deformable groups: mmdetection's
  # TOOD dconv models have 2 (num_dcn=2; its TOODHead fixes 4 groups).
  dcn_groups: int = 4

  def __post_init__(self):
    if self.la_down_rate < 1:
      raise ConfigError(
          f"model.quality.la_down_rate={self.la_down_rate}: must be >= 1 "
          "(TOOD: 8).")
    if self.num_dcn < 0 or self.dcn_groups < 1:
      raise ConfigError(
          f"model.quality.num_dcn={self.num_dcn}, dcn_groups="
          f"{self.dcn_groups}: give num_dcn >= 0 (TOOD's dconv models: 2) "
          "and dcn_groups >= 1 (4).")


@dataclasses.dataclass(frozen=True)
class TALAssign:
  """TOOD's Task Alignment Learning assignment (core/tal.py, mmdetection
  TaskAlignedAssigner): per box, the topk locations of highest alignment
  t = s^alpha * u^beta (s the predicted score of the box's class, u the IoU
  of the predicted box with it) whose point lies inside the box are
  positive; a location positive for several boxes takes the one of highest
  IoU. For the first `initial_steps` steps (mmdetection's initial_epoch)
  the assignment is ATSS (initial_topk, anchor_scale) and the loss
  focal, as TOOD's warm-up."""

  name: str = "tal"
  topk: int = 13
  alpha: float = 1.0
  beta: float = 6.0
  initial_steps: int = 0  # Warm-up steps with ATSS + focal loss (TOOD 1x:
  # 4 of 12 epochs; the `tood` preset: 30000 of 90000 steps).
  initial_topk: int = 9  # The warm-up ATSS's candidates per level.
  anchor_scale: float = 8.0  # The warm-up ATSS's anchor side, in strides.

  def __post_init__(self):
    if (self.topk < 1 or self.initial_topk < 1 or self.anchor_scale <= 0
        or self.initial_steps < 0 or self.alpha < 0 or self.beta < 0):
      raise ConfigError(
          f"model.assign: topk={self.topk}, initial_topk={self.initial_topk},"
          f" anchor_scale={self.anchor_scale} must be positive and "
          f"initial_steps={self.initial_steps}, alpha={self.alpha}, beta="
          f"{self.beta} >= 0 (TOOD: 13, 9, 8, 4 epochs, 1, 6).")


@dataclasses.dataclass(frozen=True)
class TOODLoss:
  """TOOD's loss (core/tood.py, mmdetection TOODHead.loss): after the
  warm-up, Quality Focal Loss on the score with the normalised alignment
  metric as the positives' target, over the sum of those targets; GIoU
  weighted by them, over their sum. During the warm-up (assign
  initial_steps): focal loss over num_pos, GIoU weighted by centre-ness
  targets, over their sum. Needs quality `tood` and assign `tal`."""

  name: str = "tood"
  qfl_beta: float = 2.0  # QFL's exponent on |t - p|.
  giou_weight: float = 2.0  # loss_bbox's weight.
  focal_alpha: float = 0.25  # The warm-up's focal loss (initial_loss_cls).
  focal_gamma: float = 2.0

  def __post_init__(self):
    if min(self.qfl_beta, self.giou_weight, self.focal_alpha,
           self.focal_gamma) < 0:
      raise ConfigError(
          f"model.loss: qfl_beta={self.qfl_beta}, giou_weight="
          f"{self.giou_weight}, focal_alpha={self.focal_alpha}, focal_gamma="
          f"{self.focal_gamma} must be >= 0.")


# TOOD: its head, its assigner and its loss, chosen together.
QUALITY["tood"] = TOODQuality
ASSIGNERS["tal"] = TALAssign
LOSSES["tood"] = TOODLoss


@dataclasses.dataclass(frozen=True)
class DistanceBox:
  """FCOS's box branch: four distances (l, t, r, b) from the location,
  relu(scale * x) in strides (norm_reg_targets) or exp(scale * x) in
  pixels."""

  name: str = "distances"


@dataclasses.dataclass(frozen=True)
class AnchorDeltasBox:
  """An anchor-based box branch (mmdetection's ATSSHead with
  DeltaXYWHBBoxCoder, target_means 0): deltas (dx, dy, dw, dh) = scale * x
  (no activation) from one square anchor per location, anchor_scale
  strides wide and centred on it; denormalised by target_stds, dw and dh
  clamped to |log(wh_ratio_clip)|, the box centre (px + w dx, py + h dy),
  its size (w exp(dw), h exp(dh)). The head gives that box as (l, t, r, b)
  pixels from the location (fcos_jax/model/head.py, `anchor_deltas_to_distances`):
  the same output as `distances`, which may be negative here (a box that
  misses its location). Needs norm_reg_targets=False and a loss on those
  distances (`fcos`, `atss`: GIoU on the decoded boxes, mmdetection's
  reg_decoded_bbox), or TOOD's T-head (mmdetection's anchor_type
  'anchor_based': the decoded box, in strides, is then resampled)."""

  name: str = "anchor_deltas"
  anchor_scale: float = 8.0  # Anchor side in strides (octave_base_scale 8,
  # scales_per_octave 1).
  target_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
  wh_ratio_clip: float = 16 / 1000  # dw, dh within +-|log(wh_ratio_clip)|.

  def __post_init__(self):
    if (self.anchor_scale <= 0 or len(self.target_stds) != 4
        or min(self.target_stds) <= 0 or not 0 < self.wh_ratio_clip < 1):
      raise ConfigError(
          f"model.box: anchor_scale={self.anchor_scale} must be > 0, "
          f"target_stds={self.target_stds} four values > 0 and wh_ratio_clip="
          f"{self.wh_ratio_clip} in (0, 1) (mmdetection's ATSS: 8, "
          "(0.1, 0.1, 0.2, 0.2), 0.016).")


# What the box branch regresses: FCOS's distances (the default) or anchor
# deltas. A part of the architecture (RESUME_POLICY).
BOXES = {"distances": DistanceBox, "anchor_deltas": AnchorDeltasBox}
PARTS["box"] = BOXES
RESUME_POLICY["box"] = "architecture"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The architecture of an FCOS model, and its parts (see the module doc)."""

  num_classes: int = 80
  # One foreground class for every box (FCOS as a region proposal network,
  # paper section 5): every box trains label 0, so NMS is class-agnostic,
  # and num_classes must be 1 whatever the dataset's category count.
  class_agnostic: bool = False

  # --- Backbone ---------------------------------------------------------
  backbone: str = "resnet"  # "resnet" (ResNet / ResNeXt: depth, width,
  # groups, width_per_group, stride_in_1x1) or "mobilenet_v2" (the official
  # FCOS MNV2 body: fixed widths, C3-C5 of 32, 96, 320 channels; the ResNet
  # fields are unused).
  depth: int = 50  # ResNet depth: 18, 34, 50, 101 or 152.
  width: int = 64  # Stem width; stages use width*(1,2,4,8). 64 is standard,
  # a small value (e.g. 8 or 16) gives a fast model for tests and CPU runs.
  groups: int = 1  # ResNeXt cardinality: the bottleneck 3x3 is a grouped
  # conv (32 for X-101-32x8d, 64 for X-101-64x4d); 1 is ResNet.
  width_per_group: int = 64  # ResNeXt: channels per group at width 64
  # (8 for 32x8d, 4 for 64x4d); 64 with groups=1 is ResNet.
  stride_in_1x1: bool = True  # caffe/MSRA: stride in the first 1x1 conv;
  # False: torchvision, stride in the 3x3 conv.
  freeze_at: int = 2  # 0: nothing frozen, 1: stem, 2: stem + res2, ...
  # (MobileNetV2: the first freeze_at of its 18 `features`, stem first.)
  bn_eps: float = 0.0  # Frozen BatchNorm epsilon: 0 in maskrcnn-benchmark's
  # FrozenBatchNorm2d (MSRA / FAIR weights), 1e-5 in torchvision and in
  # MobileNetV2's BatchNorm2d.
  backbone_norm: str = "frozen_bn"  # "frozen_bn" (pretrained backbones),
  # "gn": trainable GroupNorm (min(gn_groups, C) groups), for training from
  # scratch, where an identity frozen BN would leave the ResNet unnormalised,
  # or "bn": BatchNorm trained with batch statistics over the global batch
  # (SyncBN; the official MobileNetV2 models), running statistics moved by
  # bn_momentum each step and used at evaluation.
  bn_momentum: float = 0.1  # PyTorch's: running = (1 - m) running + m batch.
  dcn_stages: tuple[int, ...] = ()  # ResNet stages (2..5 = res2..res5) whose
  # bottleneck 3x3 convs are all modulated deformable convs (DCNv2), as the
  # official STAGE_WITH_DCN: (3, 4, 5) for ResNet, (4, 5) for ResNeXt.
  dcn_modulated: bool = True  # The deformable convs (dcn_stages, head_dcn)
  # are DCNv2, with a modulation mask; False: DCN v1 without a mask (mmcv's
  # "DCN", mmdetection's dconv models): the offset conv gives 2K channels.

  # --- Input normalisation (applied on the device) ------------------------
  input_bgr: bool = True  # Feed channels as BGR (caffe weights) or RGB.
  input_range: float = 255.0  # Pixel range the mean/std refer to: 255 or 1.
  pixel_mean: tuple[float, ...] = CAFFE_BGR_MEAN  # In input channel order.
  pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)

  # --- FPN --------------------------------------------------------------
  fpn_channels: int = 256
  p6_from: str = "p5"  # "p5" (official imprv, torchvision) or "c5" (paper).
  p7_relu: bool = True  # P7 = conv(ReLU(P6)) (official FCOS, torchvision);
  # False: conv(P6), mmdetection's FPN (relu_before_extra_convs=False, as
  # its ATSS and GFL configs leave it).

  # --- Head -------------------------------------------------------------
  head_convs: int = 4  # Convs in each of the class and box towers.
  head_norm: str = "gn"  # "gn" or "none".
  gn_groups: int = 32
  norm_reg_targets: bool = True  # relu(scale*x) in stride units; else exp.
  use_scale: bool = True  # Learnable per-level scalar (absent in torchvision).
  prior_prob: float = 0.01  # Initial foreground probability of class logits.
  head_dcn: bool = False  # The last conv of each tower is a DCNv2 (official
  # USE_DCN_IN_TOWER).

  # --- Locations ----------------------------------------------------------
  strides: tuple[int, ...] = (8, 16, 32, 64, 128)
  location_offset: str = "half"  # "half": (j*s + s//2); "zero": (j*s) (tv).
  # The spacing of a level's locations: "nominal": its stride s (official);
  # "canvas": canvas // cells per axis, as torchvision's AnchorGenerator
  # (equal to s when the canvas is a multiple of 128, else e.g. 448 // 4 =
  # 112 for P7 of a 448-px side). Box decoding and the size ranges always
  # use the nominal stride (torchvision's anchor sizes).
  location_stride: str = "nominal"

  # --- Parts ----------------------------------------------------------------
  quality: CenternessQuality = CenternessQuality()
  assign: FCOSAssign = FCOSAssign()
  loss: FCOSLoss = FCOSLoss()
  inference: InferenceConfig = InferenceConfig()
  numerics: Numerics = Numerics()
  box: DistanceBox = DistanceBox()

  def __post_init__(self):
    _check_choice(self, "p6_from", ("p5", "c5"))
    _check_choice(self, "head_norm", ("gn", "none"))
    _check_choice(self, "backbone_norm", ("frozen_bn", "gn", "bn"))
    _check_choice(self, "location_offset", ("half", "zero"))
    _check_choice(self, "location_stride", ("nominal", "canvas"))
    _check_choice(self, "depth", (18, 34, 50, 101, 152))
    _check_choice(self, "backbone", ("resnet", "mobilenet_v2"))
    if self.groups < 1 or self.width_per_group < 1:
      raise ConfigError(
          f"ModelConfig: groups={self.groups} and width_per_group="
          f"{self.width_per_group} must be positive.")
    if self.groups > 1 and (self.backbone != "resnet" or self.depth < 50):
      raise ConfigError(
          f"ModelConfig: groups={self.groups} (ResNeXt) needs backbone="
          f"'resnet' with a bottleneck depth (50, 101, 152), got backbone="
          f"{self.backbone!r}, depth={self.depth}.")
    if self.backbone == "resnet" and self.depth >= 50 and int(
        self.width * self.width_per_group / 64.0) < 1:
      raise ConfigError(
          f"ModelConfig: width={self.width} with width_per_group="
          f"{self.width_per_group} leaves the bottleneck no channels "
          "(int(width * width_per_group / 64) must be >= 1).")
    if self.dcn_stages and (
        not set(self.dcn_stages) <= {2, 3, 4, 5} or self.depth < 50
        or self.backbone != "resnet"):
      raise ConfigError(
          f"ModelConfig.dcn_stages={self.dcn_stages}: give stages among "
          "(2, 3, 4, 5) of a bottleneck ResNet (depth >= 50), e.g. (3, 4, 5).")
    if self.class_agnostic and self.num_classes != 1:
      raise ConfigError(
          f"ModelConfig: class_agnostic=True needs num_classes=1 (one "
          f"'object' class), got num_classes={self.num_classes}.")
    ranges = getattr(self.assign, "size_ranges", None)  # Per-level rules.
    if ranges is not None and len(ranges) != len(self.strides):
      raise ConfigError(
          f"ModelConfig: assign.size_ranges has {len(ranges)} entries but "
          f"strides has {len(self.strides)}; give one range per level.")
    if self.head_norm == "gn" and self.fpn_channels % self.gn_groups:
      raise ConfigError(
          f"ModelConfig: fpn_channels={self.fpn_channels} is not divisible by "
          f"gn_groups={self.gn_groups}.")
    _check_box(self)  # First: the other heads' checks assume distances.
    _check_families(self)
    _check_tood(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """Builds a config from a mapping; unknown keys are refused by name.

    Parts are nested mappings (`{"inference": {"score_thresh": 0.3}}`; a
    named part's `name` picks its class). A part's field may also be given
    at the top level (`{"score_thresh": 0.3}`), as the flat configs that
    runs recorded before the parts existed do. A `preset` key selects the
    base preset that the other keys override.
    """
    values = dict(values)
    preset = values.pop("preset", None)
    base = PRESETS[preset]() if preset else cls()
    return base.replace(**{k: _as_tuple(v) for k, v in values.items()})

  def replace(self, **changes) -> "ModelConfig":
    """A copy with `changes`: ModelConfig fields, parts (objects or
    mappings of their fields) or the fields of a part by their own name
    (`cfg.replace(score_thresh=0.3)` sets inference.score_thresh)."""
    own = {f.name for f in dataclasses.fields(self)}
    direct, parts = {}, {}
    for key, value in changes.items():
      if key in PARTS:
        parts.setdefault(key, {}).update(_part_values(key, value))
      elif key in own:
        direct[key] = value
      elif key in _PART_OF_FIELD:
        parts.setdefault(_PART_OF_FIELD[key], {})[key] = value
      elif key in _RENAMED:
        part, field = _RENAMED[key]
        parts.setdefault(part, {})[field] = value
      else:
        raise ConfigError(
            f"ModelConfig: unknown key {key!r}. Known keys: {sorted(own)} and "
            f"the fields of its parts: {sorted(_PART_OF_FIELD)}.")
    for part, fields in parts.items():
      direct[part] = _build_part(part, getattr(self, part), fields)
    return dataclasses.replace(self, **direct)

  @property
  def num_levels(self) -> int:
    return len(self.strides)


def uses_distribution(cfg: "ModelConfig") -> bool:
  """The head regresses a distribution per side (GFL): box_distribution
  [B, P, 4, reg_max + 1] logits, box_regression its expectation, and no
  centre-ness branch."""
  return cfg.quality.name == "gfl_joint"


# The heads whose named choices only work together, and the architecture
# fields they need, by family: (its choices by part, its fields (why), its
# preset). A new head of the family is one line here.
FAMILIES = {
    "GFL": ({"quality": "gfl_joint", "loss": "gfl"},
            {"norm_reg_targets": (True, "it regresses distances in strides")},
            "gfl"),
    "VFNet": ({"quality": "vfnet", "loss": "vfnet"},
              {"norm_reg_targets": (False, "its boxes are exp(...) pixels")},
              "vfnet"),
    "TOOD": ({"quality": "tood", "assign": "tal", "loss": "tood"},
             {"norm_reg_targets": (False, "its boxes are in pixels"),
              "location_stride": ("nominal", "it decodes its boxes from "
                                  "locations one stride apart")},
             "tood"),
}


def _check_families(cfg: "ModelConfig"):
  """Each family's choices all or none of them, with the fields it needs."""
  for family, (parts, fields, preset) in FAMILIES.items():
    chosen = [getattr(cfg, part).name == name for part, name in parts.items()]
    if any(chosen) and not all(chosen):
      got = ", ".join(f"{part}.name={getattr(cfg, part).name!r}"
                      for part in parts)
      want = ", ".join(f"{part} {name!r}" for part, name in parts.items())
      raise ConfigError(
          f"ModelConfig: {got}: {family}'s {want} go together; use the "
          f"`{preset}` preset or set {'both' if len(parts) == 2 else 'all'}.")
    for field, (value, why) in fields.items() if all(chosen) else ():
      if getattr(cfg, field) != value:
        raise ConfigError(
            f"ModelConfig: {family} ({', '.join(parts.values())}) needs "
            f"{field}={value!r} ({why}); got {getattr(cfg, field)!r}.")


def _check_tood(cfg: "ModelConfig"):
  """The sizes of TOOD's T-head."""
  if cfg.quality.name != "tood":
    return
  if cfg.quality.num_dcn > cfg.head_convs:
    raise ConfigError(
        f"ModelConfig: quality.num_dcn={cfg.quality.num_dcn} deformable "
        f"inter convs, but head_convs={cfg.head_convs}; give num_dcn <= "
        "head_convs.")
  if cfg.quality.num_dcn and cfg.fpn_channels % cfg.quality.dcn_groups:
    raise ConfigError(
        f"ModelConfig: fpn_channels={cfg.fpn_channels} is not divisible by "
        f"quality.dcn_groups={cfg.quality.dcn_groups} (TOOD's deformable "
        "inter convs split the channels into groups).")
  if (cfg.fpn_channels * cfg.head_convs) // (
      cfg.quality.la_down_rate * cfg.head_convs) < 1:
    raise ConfigError(
        f"ModelConfig: fpn_channels={cfg.fpn_channels} leaves TOOD's layer "
        f"attention no channels (fpn_channels // quality.la_down_rate = "
        f"{cfg.fpn_channels} // {cfg.quality.la_down_rate} must be >= 1).")


def _check_box(cfg: "ModelConfig"):
  """Anchor deltas give boxes in pixels, and only the FCOS / ATSS losses
  and TOOD's head take them (GFL and VFNet regress their own boxes)."""
  if cfg.box.name != "anchor_deltas":
    return
  if cfg.norm_reg_targets:
    raise ConfigError(
        "ModelConfig: box.name='anchor_deltas' decodes its boxes in pixels; "
        "set norm_reg_targets=False.")
  if cfg.quality.name == "tood":  # TOOD's anchor_type 'anchor_based'.
    return
  if cfg.quality.name not in ("centerness", "iou") or cfg.loss.name not in (
      "fcos", "atss"):
    raise ConfigError(
        f"ModelConfig: box.name='anchor_deltas' with quality.name="
        f"{cfg.quality.name!r}, loss.name={cfg.loss.name!r}: anchor deltas go "
        "with quality 'centerness' or 'iou' and loss 'fcos' or 'atss' (the "
        "`atss_anchor` preset), or TOOD's head (`tood` preset, anchor-based); "
        "GFL and VFNet regress their own boxes.")


def _part_values(part: str, value) -> dict:
  if dataclasses.is_dataclass(value):
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
  return dict(value)


def _build_part(part: str, current, fields: dict):
  """`current` with `fields` changed; a new `name` switches the class."""
  choices = PARTS[part]
  if isinstance(choices, dict):
    name = fields.get("name", current.name)
    if name not in choices:
      raise ConfigError(
          f"model.{part}.name={name!r}: must be one of {sorted(choices)}.")
    kind = choices[name]
    # Switching to another choice starts from that choice's defaults.
    base = current if isinstance(current, kind) else kind()
  else:
    kind, base = choices, current
  known = {f.name for f in dataclasses.fields(kind)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ConfigError(
        f"model.{part}: unknown key(s) {unknown}; {kind.__name__} has "
        f"{sorted(known)}.")
  return dataclasses.replace(base, **{k: _as_tuple(v) for k, v in fields.items()})


def _part_fields() -> dict[str, str]:
  """{field: part} for the fields of every part's default choice (not
  `name`): the flat spelling that `replace` and old run records use."""
  out = {}
  for part, choices in PARTS.items():
    kinds = choices.values() if isinstance(choices, dict) else [choices]
    for kind in kinds:
      for f in dataclasses.fields(kind):
        if f.name != "name":
          out.setdefault(f.name, part)
  return out


_PART_OF_FIELD = _part_fields()
# Flat names of part fields whose name changed: {old: (part, field)}.
_RENAMED = {"centerness_on": ("quality", "on")}


def canonical_keys(model: Mapping[str, Any]) -> dict[str, Any]:
  """A model config mapping (nested or flat, partial or whole) as
  {"part.field" or "field": value}, parts' fields under their part's name
  whichever way they were written; no defaults are filled in."""
  out = {}
  for key, value in model.items():
    if key in PARTS and isinstance(value, Mapping):
      out.update({f"{key}.{k}": v for k, v in value.items()})
    elif key in _PART_OF_FIELD:
      out[f"{_PART_OF_FIELD[key]}.{key}"] = value
    elif key in _RENAMED:
      out[".".join(_RENAMED[key])] = value
    else:
      out[key] = value
  return out


def official(**overrides) -> ModelConfig:
  """FCOS_imprv_R_50_FPN_1x: ctr on reg, centre sampling, GIoU, norm targets.

  overrides: fields of ModelConfig or of its parts (see `ModelConfig.replace`).
  """
  return ModelConfig().replace(**overrides)


def paper(**overrides) -> ModelConfig:
  """FCOS_R_50_FPN_1x of the paper: IoU loss, exp regression, ctr on cls."""
  base = dict(
      p6_from="c5", quality=CenternessQuality(on="cls"), norm_reg_targets=False,
      center_sampling_radius=0.0, reg_loss="iou", reg_weighting="none")
  base.update(overrides)
  return ModelConfig().replace(**base)


def torchvision(**overrides) -> ModelConfig:
  """torchvision `fcos_resnet50_fpn`: RGB ImageNet input, no Scale, anchors
  at j * (canvas // cells), open size ranges, GIoU unweighted and unsmoothed, threshold on sqrt
  score."""
  base = dict(
      stride_in_1x1=False, bn_eps=1e-5, input_bgr=False, input_range=1.0,
      pixel_mean=IMAGENET_RGB_MEAN, pixel_std=IMAGENET_RGB_STD,
      use_scale=False, size_ranges=((0.0, 64.0), (64.0, 128.0), (128.0, 256.0),
                                    (256.0, 512.0), (512.0, INF)),
      size_range_inclusive=False, location_offset="zero",
      location_stride="canvas", reg_weighting="none", iou_smooth=0.0, score_thresh=0.2,
      score_thresh_on="sqrt")
  base.update(overrides)
  return ModelConfig().replace(**base)


def rpn(**overrides) -> ModelConfig:
  """FCOS as a region proposal network (paper section 5): the official
  model with one class-agnostic 'object' class, and the proposal settings
  of Faster R-CNN's FPN RPN at test time: the best 1000 candidates of each
  level, NMS at IoU 0.7, 1000 proposals per image. The threshold on the
  object probability stays the detector's 0.05 (score_thresh=0 keeps
  every location as a candidate)."""
  base = dict(num_classes=1, class_agnostic=True, pre_nms_topk=1000,
              nms_iou=0.7, max_detections=1000)
  base.update(overrides)
  return ModelConfig().replace(**base)


def gfl(**overrides) -> ModelConfig:
  """GFL (mmdetection gfl_r50_fpn_1x_coco, 40.2 AP published): torchvision
  layout ResNet-50 with RGB ImageNet input, P6 from P5, a 4-conv GN head
  with Scale and no centre-ness, locations at j * s (mmdetection's anchor
  centres), QFL (beta 2) + GIoU (2.0) + DFL (0.25) over 0..16 bins.

  Assignment: ATSS (topk 9) as the published model when an `atss` assigner
  is registered in ASSIGNERS, else FCOS's rule (docs/algorithm.md, "GFL")."""
  base = dict(
      stride_in_1x1=False, bn_eps=1e-5, input_bgr=False, input_range=1.0,
      pixel_mean=IMAGENET_RGB_MEAN, pixel_std=IMAGENET_RGB_STD,
      location_offset="zero", quality=GFLJointQuality(), loss=GFLLoss())
  if "atss" in ASSIGNERS:
    base["assign"] = ASSIGNERS["atss"]()
  base.update(overrides)
  return ModelConfig().replace(**base)


def iou(**overrides) -> ModelConfig:
  """AdelaiDet FCOS_R_50_1x_iou: the official model with the IoU quality
  branch (on the box tower) and the GIoU loss unweighted, over N_pos."""
  base = dict(quality=IoUQuality(), reg_weighting="none")
  base.update(overrides)
  return ModelConfig().replace(**base)


def atss(**overrides) -> ModelConfig:
  """FCOS with ATSS assignment as the ATSS repository's R-50 1x (regressing
  from the point, POSITIVE_TYPE ATSS, k=9, anchors 8 s): P6 from P5, GN
  head, centre-ness on the box tower, GIoU weighted by centre-ness targets
  with weight 2, normalised distances with a per-level scale."""
  base = dict(assign=ATSSAssign(), loss=ATSSLoss())
  base.update(overrides)
  return ModelConfig().replace(**base)


def atss_anchor(**overrides) -> ModelConfig:
  """ATSS as mmdetection's atss_r50_fpn_1x_coco (39.4 AP published): the
  anchor-based head (box `anchor_deltas`: DeltaXYWH deltas, stds 0.1, 0.1,
  0.2, 0.2, from one 8-stride square anchor per location, centre-ness on
  the box tower), torchvision-layout ResNet-50 with RGB ImageNet input, P6
  from P5 and no ReLU before P7, a 4-conv GN head with Scale, anchors
  centred at j * s, ATSS assignment (topk 9), focal loss + GIoU (weight 2,
  on the decoded boxes, weighted by the centre-ness targets) + centre-ness
  BCE, score > 0.05, NMS 0.6 (docs/algorithm.md, "ATSS")."""
  base = dict(
      stride_in_1x1=False, bn_eps=1e-5, input_bgr=False, input_range=1.0,
      pixel_mean=IMAGENET_RGB_MEAN, pixel_std=IMAGENET_RGB_STD,
      location_offset="zero", p7_relu=False, norm_reg_targets=False,
      box=AnchorDeltasBox(), assign=ATSSAssign(), loss=ATSSLoss())
  base.update(overrides)
  return ModelConfig().replace(**base)


def vfnet(**overrides) -> ModelConfig:
  """VFNet (mmdetection vfnet_r50_fpn_1x_coco, 41.6 AP published):
  torchvision-layout ResNet-50 with RGB ImageNet input, P6 from P5, a
  3-conv GN tower pair, the VFNet head (initial box exp(scale * x) * 8
  strides, star deformable convs, refined box), locations at j * s
  (mmdetection's points with ATSS), ATSS assignment (topk 9), VFL (alpha
  0.75, gamma 2, IoU-weighted) + GIoU 1.5 (initial) + GIoU 2.0 (refined),
  score = sigmoid(cls), NMS 0.6 (docs/algorithm.md, "VFNet")."""
  base = dict(
      stride_in_1x1=False, bn_eps=1e-5, input_bgr=False, input_range=1.0,
      pixel_mean=IMAGENET_RGB_MEAN, pixel_std=IMAGENET_RGB_STD,
      location_offset="zero", head_convs=3, norm_reg_targets=False,
      quality=VFNetQuality(), loss=VFNetLoss(), assign=ATSSAssign())
  base.update(overrides)
  return ModelConfig().replace(**base)


P2_STRIDES = (4, 8, 16, 32, 64, 128)


def with_p2(cfg: ModelConfig) -> ModelConfig:
  """`cfg` with a P2 level (stride 4, from C2) before its P3-P7. P2 takes
  the lower half (in scale) of P3's range: the first range (lo, hi) splits
  into (lo, hi / 2) for P2 and (hi / 2, hi) for P3, the other levels keep
  theirs (COCO: P2 below 32, P3 32-64, ..., P7 above 512). An assigner
  without size ranges (ATSS) only gains the level."""
  if tuple(cfg.strides) != (8, 16, 32, 64, 128):
    raise ConfigError(
        f"with_p2: strides={cfg.strides}; P2 is added to P3-P7 (8 .. 128).")
  assign = cfg.assign
  ranges = getattr(assign, "size_ranges", None)
  if ranges is not None:
    (lo, hi), rest = ranges[0], tuple(ranges[1:])
    assign = dataclasses.replace(
        assign, size_ranges=((lo, hi / 2), (hi / 2, hi)) + rest)
  # Strides and ranges together: ModelConfig checks they agree.
  return dataclasses.replace(cfg, strides=P2_STRIDES, assign=assign)


def p2(**overrides) -> ModelConfig:
  """The official model with a P2 level (`with_p2`): six levels, strides
  4 .. 128, P2 for boxes below 32 px."""
  return with_p2(ModelConfig()).replace(**overrides)


PRESETS = {"official": official, "paper": paper, "torchvision": torchvision,
           "rpn": rpn}
PRESETS["gfl"] = gfl
PRESETS.update(iou=iou, atss=atss, p2=p2)
PRESETS["vfnet"] = vfnet
PRESETS["atss_anchor"] = atss_anchor


def tood(**overrides) -> ModelConfig:
  """TOOD (mmdetection tood_r50_fpn_1x_coco, 42.4 AP published):
  torchvision-layout ResNet-50 with RGB ImageNet input, P6 from P5, the
  T-head (6 shared GN convs, task decomposition, score sqrt(sigmoid(cls) *
  sigmoid(prob)), box exp(x) * scale strides resampled at learned
  offsets), locations at j * s (mmdetection's anchor centres), TAL (topk
  13, alpha 1, beta 6) after a warm-up of 30000 steps (4 of the 1x's 12
  epochs) with ATSS (topk 9) and focal loss, QFL (beta 2) + GIoU 2.0,
  score > 0.05, NMS 0.6 (docs/algorithm.md, "TOOD")."""
  base = dict(
      stride_in_1x1=False, bn_eps=1e-5, input_bgr=False, input_range=1.0,
      pixel_mean=IMAGENET_RGB_MEAN, pixel_std=IMAGENET_RGB_STD,
      location_offset="zero", p7_relu=False, head_convs=6,
      norm_reg_targets=False, quality=TOODQuality(), assign=TALAssign(initial_steps=30000),
      loss=TOODLoss())
  base.update(overrides)
  return ModelConfig().replace(**base)


PRESETS["tood"] = tood
