"""FCOS model configuration and the named presets.

`ModelConfig` is a frozen dataclass: hashable, so it can be a static argument
of `jax.jit`, and every variant of the algorithm is one field. The presets
are the three published variants (see docs/algorithm.md):

- `official`   : FCOS_imprv_R_50_FPN_1x (tianzhi0549/FCOS), 38.7 AP.
- `paper`      : FCOS_R_50_FPN_1x as in the ICCV 2019 paper, 37.1 AP.
- `torchvision`: torchvision's `fcos_resnet50_fpn`, 39.2 AP.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from fcos_jax import errors

INF = math.inf

# Per-preset input normalisation: caffe/MSRA weights take BGR in 0..255 minus
# the mean; torchvision weights take RGB in 0..1 with ImageNet mean and std.
CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Every architectural, assignment, loss and inference choice of FCOS."""

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

  # --- Input normalisation (applied on the device) ------------------------
  input_bgr: bool = True  # Feed channels as BGR (caffe weights) or RGB.
  input_range: float = 255.0  # Pixel range the mean/std refer to: 255 or 1.
  pixel_mean: tuple[float, ...] = CAFFE_BGR_MEAN  # In input channel order.
  pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)

  # --- FPN --------------------------------------------------------------
  fpn_channels: int = 256
  p6_from: str = "p5"  # "p5" (official imprv, torchvision) or "c5" (paper).

  # --- Head -------------------------------------------------------------
  head_convs: int = 4  # Convs in each of the class and box towers.
  head_norm: str = "gn"  # "gn" or "none".
  gn_groups: int = 32
  centerness_on: str = "reg"  # "reg": box tower (imprv); "cls": class tower.
  norm_reg_targets: bool = True  # relu(scale*x) in stride units; else exp.
  use_scale: bool = True  # Learnable per-level scalar (absent in torchvision).
  prior_prob: float = 0.01  # Initial foreground probability of class logits.
  head_dcn: bool = False  # The last conv of each tower is a DCNv2 (official
  # USE_DCN_IN_TOWER).

  # --- Locations and assignment ---------------------------------------
  strides: tuple[int, ...] = (8, 16, 32, 64, 128)
  # Regression range of each level, on m = max(l*, t*, r*, b*) in pixels.
  size_ranges: tuple[tuple[float, float], ...] = (
      (-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))
  size_range_inclusive: bool = True  # lo <= m <= hi (official) or lo < m < hi.
  location_offset: str = "half"  # "half": (j*s + s//2); "zero": (j*s) (tv).
  # The spacing of a level's locations: "nominal": its stride s (official);
  # "canvas": canvas // cells per axis, as torchvision's AnchorGenerator
  # (equal to s when the canvas is a multiple of 128, else e.g. 448 // 4 =
  # 112 for P7 of a 448-px side). Box decoding and the size ranges always
  # use the nominal stride (torchvision's anchor sizes).
  location_stride: str = "nominal"
  center_sampling_radius: float = 1.5  # In strides; 0 disables it.

  # --- Loss -------------------------------------------------------------
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  reg_loss: str = "giou"  # "giou", "iou" (-log IoU) or "linear_iou".
  reg_weighting: str = "centerness"  # "centerness" or "none" (/ num_pos).
  iou_smooth: float = 1.0  # IoU = (I + s) / (U + s) in the reg loss: 1 in the
  # official code (keeps -log IoU finite), 0 in torchvision.

  # --- Inference ----------------------------------------------------------
  score_thresh: float = 0.05
  score_thresh_on: str = "prob"  # "prob": on sigmoid(cls) (official);
  # "sqrt": on sqrt(prob * ctr) (torchvision).
  pre_nms_topk: int = 1000  # Per level.
  nms_iou: float = 0.6
  max_detections: int = 100

  # --- Numerics -----------------------------------------------------------
  dtype: str = "float32"  # Compute dtype: "float32" or "bfloat16".
  # Training's conv kernel gradients: "auto" = as GEMMs for wide convs on
  # the CPU backend (XLA:CPU's own is slow, fcos_jax/train/cpu_conv.py),
  # XLA's elsewhere; "gemm" (every conv) / "xla" force one. Same result to
  # float32 rounding.
  conv_kernel_grad: str = "auto"

  def __post_init__(self):
    _check_choice(self, "p6_from", ("p5", "c5"))
    _check_choice(self, "head_norm", ("gn", "none"))
    _check_choice(self, "backbone_norm", ("frozen_bn", "gn", "bn"))
    _check_choice(self, "centerness_on", ("reg", "cls"))
    _check_choice(self, "location_offset", ("half", "zero"))
    _check_choice(self, "location_stride", ("nominal", "canvas"))
    _check_choice(self, "reg_loss", ("giou", "iou", "linear_iou"))
    _check_choice(self, "reg_weighting", ("centerness", "none"))
    _check_choice(self, "score_thresh_on", ("prob", "sqrt"))
    _check_choice(self, "dtype", ("float32", "bfloat16"))
    _check_choice(self, "conv_kernel_grad", ("auto", "gemm", "xla"))
    _check_choice(self, "depth", (18, 34, 50, 101, 152))
    _check_choice(self, "backbone", ("resnet", "mobilenet_v2"))
    if self.groups < 1 or self.width_per_group < 1:
      raise errors.ConfigError(
          f"ModelConfig: groups={self.groups} and width_per_group="
          f"{self.width_per_group} must be positive.")
    if self.groups > 1 and (self.backbone != "resnet" or self.depth < 50):
      raise errors.ConfigError(
          f"ModelConfig: groups={self.groups} (ResNeXt) needs backbone="
          f"'resnet' with a bottleneck depth (50, 101, 152), got backbone="
          f"{self.backbone!r}, depth={self.depth}.")
    if self.backbone == "resnet" and self.depth >= 50 and int(
        self.width * self.width_per_group / 64.0) < 1:
      raise errors.ConfigError(
          f"ModelConfig: width={self.width} with width_per_group="
          f"{self.width_per_group} leaves the bottleneck no channels "
          "(int(width * width_per_group / 64) must be >= 1).")
    if self.dcn_stages and (
        not set(self.dcn_stages) <= {2, 3, 4, 5} or self.depth < 50
        or self.backbone != "resnet"):
      raise errors.ConfigError(
          f"ModelConfig.dcn_stages={self.dcn_stages}: give stages among "
          "(2, 3, 4, 5) of a bottleneck ResNet (depth >= 50), e.g. (3, 4, 5).")
    if self.class_agnostic and self.num_classes != 1:
      raise errors.ConfigError(
          f"ModelConfig: class_agnostic=True needs num_classes=1 (one "
          f"'object' class), got num_classes={self.num_classes}.")
    if len(self.size_ranges) != len(self.strides):
      raise errors.ConfigError(
          f"ModelConfig: size_ranges has {len(self.size_ranges)} entries but "
          f"strides has {len(self.strides)}; give one range per level.")
    if self.head_norm == "gn" and self.fpn_channels % self.gn_groups:
      raise errors.ConfigError(
          f"ModelConfig: fpn_channels={self.fpn_channels} is not divisible by "
          f"gn_groups={self.gn_groups}.")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
    """Builds a config from a mapping; unknown keys are refused by name.

    A `preset` key, if present, selects the base preset that the other keys
    override.
    """
    values = dict(values)
    preset = values.pop("preset", None)
    base = PRESETS[preset]() if preset else cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise errors.ConfigError(
          f"ModelConfig: unknown key(s) {unknown}. Known keys: {sorted(known)}.")
    return dataclasses.replace(base, **{k: _as_tuple(v) for k, v in values.items()})

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  @property
  def num_levels(self) -> int:
    return len(self.strides)


def _as_tuple(value):
  """ConfigDict and JSON give lists; the frozen config wants tuples."""
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuple(v) for v in value)
  return value


def _check_choice(cfg, name, choices):
  value = getattr(cfg, name)
  if value not in choices:
    raise errors.ConfigError(f"ModelConfig.{name}={value!r}: must be one of {choices}.")


def official(**overrides) -> ModelConfig:
  """FCOS_imprv_R_50_FPN_1x: ctr on reg, centre sampling, GIoU, norm targets."""
  return ModelConfig(**overrides)


def paper(**overrides) -> ModelConfig:
  """FCOS_R_50_FPN_1x of the paper: IoU loss, exp regression, ctr on cls."""
  base = dict(
      p6_from="c5", centerness_on="cls", norm_reg_targets=False,
      center_sampling_radius=0.0, reg_loss="iou", reg_weighting="none")
  base.update(overrides)
  return ModelConfig(**base)


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
  return ModelConfig(**base)


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
  return ModelConfig(**base)


PRESETS = {"official": official, "paper": paper, "torchvision": torchvision,
           "rpn": rpn}
