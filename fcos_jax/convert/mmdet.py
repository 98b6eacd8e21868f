"""mmdetection's GFL, VFNet, TOOD and ATSS checkpoints (open-mmlab/
mmdetection, configs/gfl, configs/vfnet, configs/tood, configs/atss) ->
fcos_jax variables.

A released `.pth` holds {"meta": {...}, "state_dict": ...}; the names are

  backbone.conv1.weight, backbone.bn1.*          ResNet / ResNeXt stem
  backbone.layer1.0.conv1.weight ... layer4       res2 .. res5, torchvision's
  backbone.layer1.0.downsample.{0,1}.*            names (style "pytorch":
                                                  stride in the 3x3)
  backbone.layer2.0.conv2.weight                  a DCN v1 3x3 (mmcv's "DCN",
  backbone.layer2.0.conv2.conv_offset.*           dconv models): its kernel,
                                                  its 18-channel offset conv
  neck.lateral_convs.{0,1,2}.conv.*               1x1 laterals on C3..C5
  neck.fpn_convs.{0,1,2}.conv.*                   3x3 outputs P3..P5
  neck.fpn_convs.{3,4}.conv.*                     P6 (on P5's output), P7
                                                  (on P6, no ReLU between)
  bbox_head.{cls,reg}_convs.{0..3}.conv.weight    tower convs, no bias (a
  bbox_head.{cls,reg}_convs.{0..3}.gn.*           GroupNorm follows)
  bbox_head.gfl_cls.*, bbox_head.gfl_reg.*        class logits, 4 x 17 logits
  bbox_head.scales.{0..4}.scale                   shape () (mmcv's Scale)
  bbox_head.integral.project                      the buffer 0..reg_max
                                                  (older mmdetection)

VFNet (the `vfnet` preset) has the same backbone and neck names, a ReLU
before P7 (relu_before_extra_convs=True: p7_relu) and 3 tower convs; its
head beside the towers:

  bbox_head.vfnet_reg_conv.conv.weight, .gn.*     the initial box's GN conv
                                                  (no bias: ours is 0)
  bbox_head.vfnet_reg.*, vfnet_reg_refine.*,      initial box, refined box,
  bbox_head.vfnet_cls.*                           class logits
  bbox_head.vfnet_{reg_refine,cls}_dconv.weight   the star deformable convs
                                                  (mmcv DeformConv2d, no bias)
  bbox_head.scales.{0..4}.scale,                  initial / refined box's
  bbox_head.scales_refine.{0..4}.scale            Scales

TOOD (the `tood` preset, anchor_type "anchor_free") has GFL's backbone and
neck (no ReLU before P7) and the T-head:

  bbox_head.inter_convs.{0..5}.conv.weight, .gn.* the shared GN convs
  bbox_head.{cls,reg}_decomp.layer_attention.     task decomposition: layer
      {0,2}.*, .reduction_conv.conv.weight (no    attention (1x1 convs), the
      bias), .reduction_conv.gn.*                 reduction conv and its GN
  bbox_head.tood_cls.*, bbox_head.tood_reg.*      3x3 outputs
  bbox_head.cls_prob_module.{0,2}.*,              the score's probability and
  bbox_head.reg_offset_module.{0,2}.*             the boxes' sampling offsets
  bbox_head.scales.{0..4}.scale

TOOD's anchor-based model (anchor_type "anchor_based": box
`anchor_deltas`, the T-head's DeltaXYWH deltas decoded from the 8-stride
anchor, in strides, before the resampling) has the same names and shapes.

TOOD's dconv model (tood_r101_fpn_dconv_c3-c5) has mmcv's DCNv2 in
res3-res5 (as VFNet's mdconv models, below) and in the T-head's first two
inter convs (num_dcn=2, 4 deformable groups, no bias before GN):
`inter_convs.{0,1}.conv.weight` and a 108-channel
`inter_convs.{0,1}.conv.conv_offset.*` (4 x 18 offsets, then 4 x 9 mask
logits: fcos_jax's quality.num_dcn=2, dcn_groups=4).

The registry's configs post-process as mmdetection's test_cfg: empty
boxes are dropped (inference.min_box_size 0, mmdetection's min_bbox_size)
and TOOD's boxes are not clipped to the image (inference.clip_boxes
False), so a converted model gives mmdetection's detections.

VFNet's mdconv_c3-c5 models have mmcv's DCNv2 (ModulatedDeformConv2dPack,
no bias) in res3-res5 and as the towers' last conv (dcn_on_last_conv=True):
`conv2.weight` / `{cls,reg}_convs.2.conv.weight` and a 27-channel
`conv_offset` (18 offsets, (dy, dx) per tap, then 9 mask logits: the
layout of fcos_jax's DCNv2, dcn_modulated=True and head_dcn=True).

BatchNorm runs in eval mode (norm_eval) with epsilon 1e-5; the input is
RGB, mean [123.675, 116.28, 103.53] and std [58.395, 57.12, 57.375] in
0..255, which is ImageNet's mean and std in 0..1 (the `gfl` preset). The
class logits have 80 channels, label i the i-th COCO category by id (the
order `coco_categories()` gives). The released models, their configs and
published AP are those of `fcos_jax.registry` whose source is "mmdet".

ATSS (the `atss_anchor` preset: ATSSHead, box `anchor_deltas`) has GFL's
backbone and neck (no ReLU before P7) and FCOS's head layout with anchor
deltas:

  bbox_head.{cls,reg}_convs.{0..3}.conv.weight,   tower convs (no bias) and
  bbox_head.{cls,reg}_convs.{0..3}.gn.*           their GroupNorms
  bbox_head.atss_cls.*, bbox_head.atss_reg.*,     class logits, DeltaXYWH
  bbox_head.atss_centerness.*                     deltas (4), centre-ness
                                                  (on the box tower)
  bbox_head.scales.{0..4}.scale                   on the raw deltas

The deltas are decoded (DeltaXYWHBBoxCoder, stds 0.1, 0.1, 0.2, 0.2,
wh_ratio_clip 16/1000) from one 8-stride square anchor centred at j * s,
by the head (fcos_jax/model/head.py). mmdetection scores an ATSS detection
prob x centre-ness; fcos_jax reports sqrt(prob x centre-ness): the same
ranking, so the same detections and AP, other score values (inference
`score_combine="product"` reports mmdetection's). Both take the
candidates by prob > score_thresh; a level with more than pre_nms_topk of
them keeps its best by prob in mmdetection 3.x, by prob x centre-ness in
fcos_jax.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np
from flax import traverse_util

from fcos_jax import errors, registry, storage
from fcos_jax.convert import official, safe_load
from fcos_jax.convert import torchvision as tv
from fcos_jax.model.config import (IMAGENET_RGB_MEAN, IMAGENET_RGB_STD,
                                   AnchorDeltasBox, CenternessQuality,
                                   DistanceBox, GFLJointQuality, ModelConfig,
                                   TOODQuality, VFNetQuality)
from fcos_jax.model.fcos import MODEL_STRIDES

# Fields that change what mmdetection's GFL weights compute, and their
# values there (any depth, width, groups, DCN stages: the names follow
# them; DCN is v1, dcn_modulated=False, checked when there is one).
_REQUIRED = dict(
    backbone="resnet", stride_in_1x1=False, bn_eps=1e-5,
    backbone_norm="frozen_bn", input_bgr=False,
    input_range=1.0, pixel_mean=IMAGENET_RGB_MEAN, pixel_std=IMAGENET_RGB_STD,
    p6_from="p5", p7_relu=False, head_norm="gn", gn_groups=32, head_dcn=False,
    use_scale=True, norm_reg_targets=True, location_offset="zero",
    location_stride="nominal", strides=MODEL_STRIDES,
    quality=GFLJointQuality(), box=DistanceBox())
# VFNet's (configs/vfnet): a ReLU before P7, 3 tower convs, boxes in pixels
# (an initial box in units of 8 strides), no DCN (the mdconv models: see
# convert_state_dict). gradient_mul only changes training.
_REQUIRED_VFNET = dict(
    _REQUIRED, p7_relu=True, head_convs=3, norm_reg_targets=False,
    dcn_stages=(), quality=VFNetQuality())
# TOOD's (configs/tood, anchor_free): 6 shared convs, la_down_rate 8
# (mmdetection's stacked_convs * 8), boxes in pixels, no DCN.
_REQUIRED_TOOD = dict(
    _REQUIRED, head_convs=6, norm_reg_targets=False, dcn_stages=(),
    quality=TOODQuality())

# ATSS's (configs/atss): GFL's backbone and neck, 4 tower convs with
# centre-ness on the box tower, anchor deltas (mmdetection's DeltaXYWH
# coder with its defaults), no DCN.
_REQUIRED_ATSS = dict(
    _REQUIRED, head_convs=4, norm_reg_targets=False, dcn_stages=(),
    quality=CenternessQuality(on="reg"), box=AnchorDeltasBox())

_PROJECT = "bbox_head.integral.project"
# The output convs' names: GFL's (also the default), ATSS's.
_GFL_OUTPUTS = {"cls_logits": "gfl_cls", "box_regression": "gfl_reg"}
_ATSS_OUTPUTS = {"cls_logits": "atss_cls", "box_regression": "atss_reg",
                 "centerness": "atss_centerness"}


def published_config(name: str, **overrides) -> ModelConfig:
  """The ModelConfig of mmdetection's released model `name` (80 classes)."""
  return registry.get(name, "mmdet").model_config(**overrides)


def find_published(cfg: ModelConfig) -> str:
  """The mmdetection model `cfg` describes; refuses naming the nearest."""
  return official.find_published(cfg, registry.names("mmdet"),
                                 published_config)


# --- Loading -----------------------------------------------------------------


def load_mmdet_state_dict(state_dict) -> dict[str, np.ndarray]:
  """A path (.pth via torch, .npz) or a mapping -> {name: array}, with the
  checkpoint's {"meta", "state_dict"} wrapper (and a `module.` prefix)
  removed."""
  if isinstance(state_dict, (str, os.PathLike)):
    path = os.fspath(state_dict)
    if path.endswith(".npz"):
      state_dict = tv.load_state_dict(path)
    else:
      try:
        import torch  # noqa: F401  (lazy: only needed to read .pth files)
      except ImportError as e:
        raise ImportError(
            f"Reading {path!r} needs PyTorch (pip install torch). Without it, "
            "save checkpoint['state_dict'] as .npz elsewhere and pass that."
        ) from e
      state_dict = safe_load.torch_load(path, storage.read_bytes(path))
  if isinstance(state_dict, Mapping) and isinstance(
      state_dict.get("state_dict"), Mapping):
    state_dict = state_dict["state_dict"]
  sd = tv.load_state_dict(state_dict)
  return {k[len("module."):] if k.startswith("module.") else k: v
          for k, v in sd.items()}


# --- Names -------------------------------------------------------------------


def _backbone_name(path: tuple[str, ...]) -> str:
  """torchvision's names; a DCN v1 conv2 (conv2/conv, conv2/offset) is
  mmcv's DeformConv2dPack: conv2.weight and conv2.conv_offset.*."""
  if len(path) == 5:  # res{k}, block{i}, conv2, conv|offset, leaf
    block = tv._backbone_name(path[:3] + ("kernel",))  # pylint: disable=protected-access
    base = block[:-len(".weight")]
    if path[3] == "conv":
      return f"{base}.weight"
    return f"{base}.conv_offset.{'weight' if path[4] == 'kernel' else 'bias'}"
  return tv._backbone_name(path)  # pylint: disable=protected-access


def _fpn_name(path: tuple[str, ...]) -> str:
  module, leaf = path
  leaf = "weight" if leaf == "kernel" else "bias"
  if module in ("p6", "p7"):  # The extra convs follow P3..P5's outputs.
    return f"fpn_convs.{3 if module == 'p6' else 4}.conv.{leaf}"
  kind = "lateral_convs" if module.startswith("lateral") else "fpn_convs"
  return f"{kind}.{int(module[-1]) - 3}.conv.{leaf}"


def _head_name(path: tuple[str, ...], outputs=None) -> str | None:
  """mmdetection's name of our head parameter; None for the biases of the
  convs that a GroupNorm follows (the towers, VFNet's vfnet_reg_conv),
  which mmdetection's ConvModule (conv + GN) does not have."""
  if path[0].startswith("scale_refine_"):
    return f"scales_refine.{path[0][len('scale_refine_'):]}.scale"
  if path[0].startswith("scale_"):
    return f"scales.{path[0][len('scale_'):]}.scale"
  w_b = lambda leaf: "weight" if leaf in ("kernel", "scale") else "bias"
  m = re.fullmatch(r"(cls|box)_tower_(\d+)", path[0])
  if m and len(path) == 3:  # A DCNv2 tower conv (VFNet's mdconv models).
    base = f"{'cls' if m[1] == 'cls' else 'reg'}_convs.{m[2]}.conv"
    if path[1] == "offset":  # mmcv's ModulatedDeformConv2dPack.
      return f"{base}.conv_offset.{w_b(path[2])}"
    return None if path[2] == "bias" else f"{base}.weight"
  m = re.fullmatch(r"inter_convs_(\d+)", path[0])
  if m and len(path) == 3:  # A DCNv2 inter conv (TOOD's dconv models).
    base = f"inter_convs.{m[1]}.conv"
    if path[1] == "offset":
      return f"{base}.conv_offset.{w_b(path[2])}"
    return None if path[2] == "bias" else f"{base}.weight"
  if len(path) == 3:  # TOOD's task decompositions.
    decomp, module, leaf = path
    sub = {"reduction_conv": "reduction_conv.conv",
           "reduction_norm": "reduction_conv.gn"}.get(
               module, module.replace("layer_attention_", "layer_attention."))
    return f"{decomp}.{sub}.{w_b(leaf)}"
  module, leaf = path
  m = re.fullmatch(r"inter_(convs|norm)_(\d+)", module)  # TOOD
  if m:
    sub = "conv" if m[1] == "convs" else "gn"
    return f"inter_convs.{m[2]}.{sub}.{w_b(leaf)}"
  m = re.fullmatch(r"(cls_prob_module|reg_offset_module)_(\d)", module)
  if m:
    return f"{m[1]}.{m[2]}.{w_b(leaf)}"
  if module.startswith("tood_"):
    return f"{module}.{w_b(leaf)}"
  if module == "vfnet_reg_conv":
    return None if leaf == "bias" else "vfnet_reg_conv.conv.weight"
  if module == "vfnet_reg_norm":
    return f"vfnet_reg_conv.gn.{'weight' if leaf == 'scale' else 'bias'}"
  if module.startswith("vfnet_"):  # The convs (bias), the dconvs (none).
    return f"{module}.{'weight' if leaf == 'kernel' else 'bias'}"
  m = re.fullmatch(r"(cls|box)_(tower|norm)_(\d+)", module)
  if m:
    tower = "cls_convs" if m[1] == "cls" else "reg_convs"
    if m[2] == "tower":
      return None if leaf == "bias" else f"{tower}.{m[3]}.conv.weight"
    return f"{tower}.{m[3]}.gn.{'weight' if leaf == 'scale' else 'bias'}"
  name = (outputs or _GFL_OUTPUTS)[module]  # The output convs.
  return f"{name}.{'weight' if leaf == 'kernel' else 'bias'}"


def _family(cfg: ModelConfig) -> str:
  """Which of mmdetection's heads `cfg` is, by its quality: "GFL"
  (gfl_joint), "VFNet", "TOOD", or "ATSS" (any other: FCOS's head, which
  the ATSS checks then hold to anchor deltas)."""
  return {"gfl_joint": "GFL", "vfnet": "VFNet", "tood": "TOOD"}.get(
      cfg.quality.name, "ATSS")


def state_dict_names(cfg: ModelConfig) -> dict:
  """{mmdetection state-dict name: (our parameter path, our shape)} for
  `FCOS(cfg)` (shapes in our layout: conv kernels HWIO). The tower convs'
  biases have no name there (`zero_biases`)."""
  outputs = _ATSS_OUTPUTS if _family(cfg) == "ATSS" else _GFL_OUTPUTS
  prefix = {"backbone": ("backbone.", _backbone_name),
            "fpn": ("neck.", _fpn_name),
            "head": ("bbox_head.", lambda p: _head_name(p, outputs))}
  targets = {}
  for path, shape in tv._param_shapes(cfg).items():  # pylint: disable=protected-access
    pre, name = prefix[path[0]]
    local = name(path[1:])
    if local is not None:
      targets[pre + local] = (path, shape)
  return targets


def zero_biases(cfg: ModelConfig) -> dict:
  """{our path: zeros} of the biases of the convs a GroupNorm follows (the
  towers, VFNet's vfnet_reg_conv): mmdetection's have none (bias=False
  before GroupNorm), i.e. zero."""
  return {path: np.zeros(shape, np.float32)
          for path, shape in tv._param_shapes(cfg).items()  # pylint: disable=protected-access
          if path[0] == "head" and path[-1] == "bias" and "offset" not in path
          and re.fullmatch(r"(cls|box)_tower_\d+|vfnet_reg_conv", path[1])}


def mmdet_shape(shape, path: tuple[str, ...]) -> tuple[int, ...]:
  """Our shape of the parameter at `path` -> mmdetection's (OIHW convs,
  scalar scales)."""
  return tv.torch_shape(shape, path[-1])


# --- Conversion --------------------------------------------------------------


def convert_state_dict(state_dict, cfg: ModelConfig) -> dict:
  """An mmdetection GFL, VFNet, TOOD or ATSS state dict (or its
  checkpoint, {"meta", "state_dict"}) -> {"params": ...} for `FCOS(cfg)`
  (quality `gfl_joint`, `vfnet`, `tood` or, for ATSS, centre-ness with box
  `anchor_deltas` says which).

  cfg: `published_config(name)` of the checkpoint's model (or the same
  architecture at any width, e.g. in tests). A missing, unexpected or
  mis-shaped tensor is refused with the full list.
  """
  what = _family(cfg)
  if what == "VFNet":
    required = dict(_REQUIRED_VFNET)
    if cfg.dcn_stages:  # mdconv_c3-c5: mmcv's DCNv2 in res3-res5 and on
      # the towers' last conv (dcn_on_last_conv).
      required.update(dcn_stages=(3, 4, 5), dcn_modulated=True,
                      head_dcn=True)
  elif what == "TOOD":  # anchor_free, or anchor_based: anchor deltas.
    required = dict(_REQUIRED_TOOD, box=(
        AnchorDeltasBox() if cfg.box.name == "anchor_deltas"
        else DistanceBox()))
    if cfg.dcn_stages or cfg.quality.num_dcn:  # The dconv models.
      required.update(dcn_stages=cfg.dcn_stages, dcn_modulated=True,
                      quality=TOODQuality(num_dcn=2))
  elif what == "ATSS":
    required = _REQUIRED_ATSS
  else:
    required = dict(_REQUIRED, **({"dcn_modulated": False} if cfg.dcn_stages
                                  else {}))
  tv._check_cfg(cfg, required, f"mmdetection's {what} checkpoints")  # pylint: disable=protected-access
  sd = load_mmdet_state_dict(state_dict)
  if what == "GFL" and _PROJECT in sd:  # The Integral's fixed 0..reg_max, a buffer.
    project = np.asarray(sd.pop(_PROJECT), np.float32).reshape(-1)
    want = np.arange(cfg.quality.reg_max + 1, dtype=np.float32)
    if project.shape != want.shape or not np.allclose(project, want):
      raise errors.DataError(
          f"The checkpoint's {_PROJECT} is {project.tolist()}; fcos_jax's "
          f"Integral takes 0, 1, ..., reg_max={cfg.quality.reg_max}: set "
          "model.quality.reg_max to the checkpoint's.")
  # mmcv's Scale is a 0-d tensor (some versions (1,)); ours is a scalar.
  sd = {k: (v.reshape(()) if re.fullmatch(
      r"bbox_head\.scales(_refine)?\.\d+\.scale", k) and v.shape == (1,)
            else v) for k, v in sd.items()}
  flat = tv._convert(sd, state_dict_names(cfg), f"fcos_jax {what} "  # pylint: disable=protected-access
                     "(mmdetection layout)")
  flat.update(zero_biases(cfg))
  return {"params": traverse_util.unflatten_dict(flat)}


def convert_published(state_dict, name: str, **inference):
  """mmdetection's model `name` -> (cfg, params, the 80 COCO categories)."""
  cfg = published_config(name, **inference)
  return cfg, convert_state_dict(state_dict, cfg)["params"], tv.coco_categories()
