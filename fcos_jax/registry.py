"""The released FCOS-family models, in one table: what each computes, how
it was trained, where its weights are, under which licence.

One `Release` per model published by the official FCOS (tianzhi0549/FCOS,
maskrcnn-benchmark), AdelaiDet (aim-uofa/AdelaiDet, detectron2),
torchvision, and mmdetection's GFL, VFNet and TOOD (open-mmlab/
mmdetection). The converters
(`fcos_jax.convert.official`, `.adelaidet`, `.mmdet`),
the run config `configs/zoo.py:NAME`, `configs/torchvision_r50.py` and
docs/model_zoo.md read it;

  python -m fcos_jax.registry > docs/model_zoo.md

regenerates that page, and

  python -m fcos_jax.registry weights > docs/weights.md

the page of every weights file with its URL, checksum and licence (the
ImageNet starts too: IMAGENET_STARTS); tests/test_registry.py checks both
are current.

The AP of each model is the one its authors publish (COCO minival /
val2017), not measured here. The official FCOS and AdelaiDet weights are
licensed for non-commercial use only (the LICENSE of each repository:
"FCOS for non-commercial purposes", "AdelaiDet for non-commercial
purposes"; AdelaiDet's authors grant commercial licences on request);
torchvision's are BSD-3-Clause, mmdetection's Apache-2.0.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Mapping, Optional, Union

from fcos_jax.errors import ConfigError
from fcos_jax.model import config as presets
from fcos_jax.model.config import ModelConfig

# Schedules of the official and AdelaiDet configs: (steps, LR decay steps)
# at their batch (IMS_PER_BATCH); BASE_LR 0.01 at that batch.
SCHEDULES = {"1x": (90000, (60000, 80000)), "2x": (180000, (120000, 160000))}
MULTI_SCALE = (640, 800)  # Short side drawn from [640, 800] in training.

SOURCES = {
    "official": "official FCOS",
    "adelaidet": "AdelaiDet FCOS",
    "torchvision": "torchvision FCOS",
    "mmdet": "mmdetection GFL / VFNet / TOOD / ATSS",
}
REPOSITORIES = {
    "official": "https://github.com/tianzhi0549/FCOS",
    "adelaidet": "https://github.com/aim-uofa/AdelaiDet",
    "torchvision": "https://github.com/pytorch/vision",
    "mmdet": "https://github.com/open-mmlab/mmdetection",
}
NON_COMMERCIAL = "non-commercial use only"
LICENCES = {  # Quoted in docs/model_zoo.md.
    "official": f"{NON_COMMERCIAL} (tianzhi0549/FCOS LICENSE)",
    "adelaidet": f"{NON_COMMERCIAL} (aim-uofa/AdelaiDet LICENSE)",
    "torchvision": "BSD-3-Clause",
    "mmdet": "Apache-2.0",
}

_OFFICIAL_URL = ("https://huggingface.co/tianzhi/FCOS/resolve/main/"
                 "{}.pth?download=true")
_MMDET_URL = "https://download.openmmlab.com/mmdetection/v2.0/{}/{}/{}.pth"
_ADELAIDET_URL = ("https://huggingface.co/tianzhi/AdelaiDet-FCOS/resolve/main/"
                  "{}.pth?download=true")


@dataclasses.dataclass(frozen=True)
class Release:
  """One released model."""

  name: str  # As released (the weights' file name without .pth; for
  # mmdetection its config's name, the file adds a time stamp: `url`).
  source: str  # A key of SOURCES.
  preset: str  # A key of fcos_jax.model.config.PRESETS ...
  overrides: Mapping[str, Any]  # ... and its fields that differ.
  schedule: str  # A key of SCHEDULES, or the recipe in words.
  batch: int  # IMS_PER_BATCH: global batch of the schedule.
  scales: Union[int, tuple[int, int]]  # Training short side: 800 or a range.
  imagenet: str  # The ImageNet start's file name ...
  init_format: str  # ... and its config.init_backbone_format.
  ap: float  # COCO minival AP: published, not measured here.
  url: str  # Where the weights are published (as the source's README).
  checksum: Optional[str] = None  # Published hash (prefix), if any.

  def __post_init__(self):
    object.__setattr__(self, "overrides",
                       types.MappingProxyType(dict(self.overrides)))

  @property
  def licence(self) -> str:
    return LICENCES[self.source]

  def model_config(self, **overrides) -> ModelConfig:
    """The ModelConfig that computes what the released weights computed (80
    COCO classes), with `overrides` (inference fields, or a small width
    for tests)."""
    fields = dict(num_classes=80, **self.overrides)
    fields.update(overrides)
    return presets.PRESETS[self.preset](**fields)


def _official(name, preset, overrides, ap, scales=800, batch=16,
              imagenet="R-50.pkl", init_format="detectron_pkl"):
  return Release(name, "official", preset, overrides,
                 "2x" if name.endswith("_2x") else "1x", batch, scales,
                 imagenet, init_format, ap, _OFFICIAL_URL.format(name))


def _adelaidet(name, overrides, ap, imagenet):
  return Release(name, "adelaidet", "official", overrides,
                 "2x" if name.endswith("_2x") else "1x", 16,
                 MULTI_SCALE if "_MS_" in name else 800, imagenet,
                 "detectron_pkl", ap, _ADELAIDET_URL.format(name))


def _mmdet(name, stamp, overrides, ap, imagenet, family="gfl", preset=None,
           file=None):
  """mmdetection's configs/FAMILY/NAME.py and its weights NAME_STAMP.pth
  (STAMP: date, time and the sha256 prefix mmdetection's publish_model
  appends; FILE instead of NAME where the file is named otherwise). Its
  README's 1x / 2x are 90k / 180k iterations at batch 16 (8 GPUs x 2);
  mstrain draws the short side from [480, 800] (GFL) or [480, 960]
  (VFNet). FAMILY is the preset, unless PRESET is given. Post-processing
  as mmdetection's test_cfg: empty boxes dropped (min_bbox_size 0), and
  TOOD's boxes not clipped to the image."""
  inference = dict(min_box_size=0.0,
                   **({"clip_boxes": False} if family == "tood" else {}))
  overrides = dict(_MMDET if family == "gfl" else {}, **inference,
                   **overrides)
  return Release(name, "mmdet", preset or family, overrides,
                 "2x" if "_2x_" in name else "1x", 16,
                 _MMDET_MSTRAIN[family] if "_mstrain_" in name else 800,
                 imagenet, "torchvision_resnet", ap,
                 _MMDET_URL.format(family, name, f"{file or name}_{stamp}"),
                 checksum=stamp.rsplit("-", 1)[1])


# mmdetection's GFL FPN (add_extra_convs="on_output") puts no ReLU before
# P7; VFNet's (relu_before_extra_convs=True) does, the preset's default.
_MMDET = dict(p7_relu=False)
# VFNet's mdconv: mmcv's DCNv2 (with its mask) in res3-res5 and as the
# towers' last conv.
_MDCONV = dict(dcn_stages=(3, 4, 5), dcn_modulated=True, head_dcn=True)
_MMDET_MSTRAIN = {"gfl": (480, 800), "vfnet": (480, 960), "tood": (480, 800)}
# mmcv's "DCN" (DeformConv2dPack) in res3-res5, v1: no modulation mask.
_DCN_V1 = dict(dcn_stages=(3, 4, 5), dcn_modulated=False)
_DCN = dict(dcn_stages=(3, 4, 5), head_dcn=True)
_DCN_X = dict(dcn_stages=(4, 5), head_dcn=True)  # ResNeXt: res4-res5 only.
# FAIR's ResNeXt ImageNet weights: stride in the 3x3.
_X32 = dict(depth=101, groups=32, width_per_group=8, stride_in_1x1=False)
_X64 = dict(depth=101, groups=64, width_per_group=4, stride_in_1x1=False)
# The MobileNetV2 configs have no FCOS section: the paper's head with P6
# from P5; the whole body is trained (FREEZE_CONV_BODY_AT: 0), its
# BatchNorm with batch statistics (SyncBN or per-GPU BN).
_MNV2 = dict(backbone="mobilenet_v2", bn_eps=1e-5, freeze_at=0, p6_from="p5",
             backbone_norm="bn")
_MNV2_START = dict(imagenet="mobilenet_v2-ecbe2b5.pth",
                   init_format="mobilenet_v2_official")
# detectron2: FrozenBatchNorm epsilon 1e-5, its BGR mean; its FAIR
# ResNeXt-101 32x8d takes std-normalised input.
DETECTRON2_BGR_MEAN = (103.530, 116.280, 123.675)
_D2 = dict(bn_eps=1e-5, pixel_mean=DETECTRON2_BGR_MEAN)
_D2_X32 = dict(_D2, **_X32, pixel_std=(57.375, 57.120, 58.395))
_D2_X64 = dict(_D2, **_X64)
_MS = dict(scales=MULTI_SCALE)

_RELEASES = (
    # configs/fcos/*.yaml of the official repository: `imprv` models are
    # the `official` preset; the paper's models take P6 from P5 too (their
    # configs set USE_C5: False, unlike the paper's text).
    _official("FCOS_imprv_R_50_FPN_1x", "official", {}, 38.7),
    _official("FCOS_imprv_dcnv2_R_50_FPN_1x", "official", _DCN, 42.3),
    _official("FCOS_imprv_R_101_FPN_2x", "official", dict(depth=101), 43.0,
              imagenet="R-101.pkl", **_MS),
    _official("FCOS_imprv_dcnv2_R_101_FPN_2x", "official",
              dict(depth=101, **_DCN), 45.6, imagenet="R-101.pkl", **_MS),
    _official("FCOS_imprv_X_101_32x8d_FPN_2x", "official", _X32, 44.0,
              imagenet="X-101-32x8d.pkl", **_MS),
    _official("FCOS_imprv_dcnv2_X_101_32x8d_FPN_2x", "official",
              dict(_X32, **_DCN_X), 46.4, imagenet="X-101-32x8d.pkl", **_MS),
    _official("FCOS_imprv_X_101_64x4d_FPN_2x", "official", _X64, 44.7,
              imagenet="X-101-64x4d.pkl", **_MS),
    _official("FCOS_imprv_dcnv2_X_101_64x4d_FPN_2x", "official",
              dict(_X64, **_DCN_X), 46.6, imagenet="X-101-64x4d.pkl", **_MS),
    _official("FCOS_R_50_FPN_1x", "paper", dict(p6_from="p5"), 37.1),
    _official("FCOS_R_101_FPN_2x", "paper", dict(depth=101, p6_from="p5"),
              41.4, imagenet="R-101.pkl", **_MS),
    _official("FCOS_X_101_32x8d_FPN_2x", "paper", dict(_X32, p6_from="p5"),
              42.5, imagenet="X-101-32x8d.pkl", **_MS),
    _official("FCOS_X_101_64x4d_FPN_2x", "paper", dict(_X64, p6_from="p5"),
              43.0, imagenet="X-101-64x4d.pkl", **_MS),
    _official("FCOS_syncbn_bs32_c128_MNV2_FPN_1x", "paper",
              dict(_MNV2, fpn_channels=128), 30.9, batch=32, **_MNV2_START),
    _official("FCOS_syncbn_bs32_MNV2_FPN_1x", "paper", _MNV2, 33.1, batch=32,
              **_MNV2_START),
    _official("FCOS_bn_bs16_MNV2_FPN_1x", "paper", _MNV2, 31.0,
              **_MNV2_START),
    # configs/FCOS-Detection/*.yaml of AdelaiDet: the official imprv recipe
    # (ctr on reg, normalised targets, centre sampling, GIoU) on detectron2.
    _adelaidet("FCOS_R_50_1x", _D2, 38.7, "R-50.pkl"),
    _adelaidet("FCOS_MS_R_50_2x", _D2, 41.0, "R-50.pkl"),
    _adelaidet("FCOS_MS_R_101_2x", dict(depth=101, **_D2), 43.1, "R-101.pkl"),
    _adelaidet("FCOS_MS_X_101_32x8d_2x", _D2_X32, 43.9, "X-101-32x8d.pkl"),
    _adelaidet("FCOS_MS_X_101_64x4d_2x", _D2_X64, 44.7, "X-101-64x4d.pkl"),
    _adelaidet("FCOS_MS_X_101_32x8d_dcnv2_2x", dict(_D2_X32, **_DCN_X), 46.6,
               "X-101-32x8d.pkl"),
    # torchvision.models.detection.fcos_resnet50_fpn, COCO_V1 weights; the
    # sha256 prefix is in the file name.
    Release("fcos_resnet50_fpn", "torchvision", "torchvision", {},
            "26 epochs, LR /10 after 16 and 22", 16, 800,
            "resnet50-0676ba61.pth", "torchvision_resnet", 39.2,
            "https://download.pytorch.org/models/"
            "fcos_resnet50_fpn_coco-99b0c9b7.pth", checksum="99b0c9b7"),
    # configs/gfl of mmdetection: the `gfl` preset (torchvision-style
    # ResNet / ResNeXt, RGB ImageNet input, anchor centres at j * s). Its
    # dconv models use mmcv's DCN, v1 without a mask (its README's "dcnv2"
    # notwithstanding: type="DCN" is DeformConv2dPack).
    _mmdet("gfl_r50_fpn_1x_coco", "20200629_121244-25944287", {}, 40.2,
           "resnet50-0676ba61.pth"),
    _mmdet("gfl_r50_fpn_mstrain_2x_coco", "20200629_213802-37bb1edc", {},
           42.9, "resnet50-0676ba61.pth"),
    _mmdet("gfl_r101_fpn_mstrain_2x_coco", "20200629_200126-dd12f847",
           dict(depth=101), 44.7, "resnet101-63fe2227.pth"),
    _mmdet("gfl_x101_32x4d_fpn_mstrain_2x_coco", "20200630_102002-50c1ffdb",
           dict(depth=101, groups=32, width_per_group=4), 45.9,
           "resnext101_32x4d-a5af3160.pth"),
    _mmdet("gfl_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
           "20200630_102002-134b07df", dict(depth=101, **_DCN_V1), 47.1,
           "resnet101-63fe2227.pth"),
    _mmdet("gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco",
           "20200630_102002-14a2bf25",
           dict(depth=101, groups=32, width_per_group=4,
                **dict(_DCN_V1, dcn_stages=(4, 5))), 48.1,
           "resnext101_32x4d-a5af3160.pth"),
    # configs/vfnet of mmdetection (box AP val): the `vfnet` preset. Its
    # mdconv models: mmcv's DCNv2 in res3-res5 and as the towers' last conv
    # (dcn_on_last_conv).
    _mmdet("vfnet_r50_fpn_1x_coco", "20201027-38db6f58", {}, 41.6,
           "resnet50-0676ba61.pth", family="vfnet"),
    _mmdet("vfnet_r50_fpn_mstrain_2x_coco", "20201027-7cc75bd2", {}, 44.5,
           "resnet50-0676ba61.pth", family="vfnet"),
    _mmdet("vfnet_r101_fpn_1x_coco", "20201027pth-c831ece7",
           dict(depth=101), 43.0, "resnet101-63fe2227.pth", family="vfnet"),
    _mmdet("vfnet_r101_fpn_mstrain_2x_coco", "20201027pth-4a5d53f1",
           dict(depth=101), 46.2, "resnet101-63fe2227.pth", family="vfnet"),
    _mmdet("vfnet_r50_fpn_mdconv_c3-c5_mstrain_2x_coco",
           "20201027pth-6879c318", _MDCONV, 47.8, "resnet50-0676ba61.pth",
           family="vfnet"),
    _mmdet("vfnet_r101_fpn_mdconv_c3-c5_mstrain_2x_coco",
           "20201027pth-7729adb5", dict(depth=101, **_MDCONV), 49.0,
           "resnet101-63fe2227.pth", family="vfnet"),
    _mmdet("vfnet_x101_32x4d_fpn_mdconv_c3-c5_mstrain_2x_coco",
           "20201027pth-d300a6fc",
           dict(depth=101, groups=32, width_per_group=4, **_MDCONV), 49.7,
           "resnext101_32x4d-a5af3160.pth", family="vfnet"),
    _mmdet("vfnet_x101_64x4d_fpn_mdconv_c3-c5_mstrain_2x_coco",
           "20201027pth-b5f6da5e",
           dict(depth=101, groups=64, width_per_group=4, **_MDCONV), 50.4,
           "resnext101_64x4d-ee2c6f71.pth", family="vfnet"),
    # configs/tood of mmdetection (box AP, metafile.yml): the `tood` preset,
    # anchor_type "anchor_free" (and the anchor-based one below). The X-101
    # dconv model has a config but no released weights.
    _mmdet("tood_r50_fpn_1x_coco", "20211210_103425-20e20746", {}, 42.4,
           "resnet50-0676ba61.pth", family="tood"),
    _mmdet("tood_r50_fpn_mstrain_2x_coco", "20211210_144231-3b23174c", {},
           44.5, "resnet50-0676ba61.pth", family="tood"),
    _mmdet("tood_r101_fpn_mstrain_2x_coco", "20211210_144232-a18f53c8",
           dict(depth=101), 46.1, "resnet101-63fe2227.pth", family="tood"),
    _mmdet("tood_x101_64x4d_fpn_mstrain_2x_coco", "20211211_003519-a4f36113",
           dict(depth=101, groups=64, width_per_group=4), 47.6,
           "resnext101_64x4d-ee2c6f71.pth", family="tood"),
    # dconv: mmcv's DCNv2 in res3-res5 and the T-head's first two inter
    # convs (num_dcn=2, 4 deformable groups).
    _mmdet("tood_r101_fpn_dconv_c3-c5_mstrain_2x_coco",
           "20211210_213728-4a824142",
           dict(depth=101, dcn_stages=(3, 4, 5), dcn_modulated=True,
                num_dcn=2), 49.3, "resnet101-63fe2227.pth", family="tood"),
    # anchor_type "anchor_based": the T-head's box is DeltaXYWH deltas from
    # the 8-stride anchor (box `anchor_deltas`).
    _mmdet("tood_r50_fpn_anchor_based_1x_coco", "20211214_100105-b776c134",
           dict(box={"name": "anchor_deltas"}), 42.4,
           "resnet50-0676ba61.pth", family="tood"),
    # configs/atss of mmdetection (box AP, metafile.yml): the `atss_anchor`
    # preset (ATSSHead: DeltaXYWH deltas from an 8-stride anchor, box
    # `anchor_deltas`). The R-101's file is named atss_r101_fpn_1x_STAMP.
    _mmdet("atss_r50_fpn_1x_coco", "20200209-985f7bd0", {}, 39.4,
           "resnet50-0676ba61.pth", family="atss", preset="atss_anchor"),
    _mmdet("atss_r101_fpn_1x_coco", "20200825-dfcadd6f", dict(depth=101),
           41.5, "resnet101-63fe2227.pth", family="atss",
           preset="atss_anchor", file="atss_r101_fpn_1x"),
)

MODELS: dict[str, Release] = {r.name: r for r in _RELEASES}
assert len(MODELS) == len(_RELEASES), "duplicate model names"


# --- The ImageNet starts ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageNetStart:
  """An ImageNet backbone file that a released model's training starts from
  (its `imagenet`), as the config of `sources` names it."""

  file: str  # Release.imagenet: the file's name.
  sources: tuple[str, ...]  # The keys of SOURCES whose configs name this copy.
  init_format: str  # config.init_backbone_format.
  url: str  # Where that config downloads it from.
  publisher: str  # Who publishes it, and what it is.
  licence: str
  checksum: Optional[str] = None  # Published hash (prefix), if any.
  config: Optional[str] = None  # A run config to start; default: configs/
  # zoo.py of the first release that starts from it.


_DETECTRON = "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/"
_DETECTRON2 = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/"
# The MODEL_ZOO.md of Detectron and of detectron2: "All models available for
# download through this document are licensed under the Creative Commons
# Attribution-ShareAlike 3.0 license".
_CC_BY_SA = "CC BY-SA 3.0 ({} MODEL_ZOO.md)"

IMAGENET_STARTS = (
    # The official configs' catalog (fcos_core/config/paths_catalog.py).
    ImageNetStart("R-50.pkl", ("official",), "detectron_pkl",
                  _DETECTRON + "MSRA/R-50.pkl",
                  "Detectron: MSRA's ResNet-50, converted",
                  _CC_BY_SA.format("Detectron")),
    ImageNetStart("R-101.pkl", ("official",), "detectron_pkl",
                  _DETECTRON + "MSRA/R-101.pkl",
                  "Detectron: MSRA's ResNet-101, converted",
                  _CC_BY_SA.format("Detectron")),
    ImageNetStart("X-101-32x8d.pkl", ("official",), "detectron_pkl",
                  _DETECTRON + "20171220/X-101-32x8d.pkl",
                  "Detectron: FAIR's ResNeXt-101-32x8d (Caffe2)",
                  _CC_BY_SA.format("Detectron")),
    ImageNetStart("X-101-64x4d.pkl", ("official",), "detectron_pkl",
                  _DETECTRON + "20171220/X-101-64x4d.pkl",
                  "Detectron: FAIR's ResNeXt-101-64x4d",
                  "none stated for this copy (Detectron's MODEL_ZOO.md lists "
                  "FBResNeXt/X-101-64x4d.pkl, CC BY-SA 3.0)"),
    # configs/fcos/*MNV2*.yaml: the FCOS authors' copy (no licence stated
    # for the file; their repository's LICENSE is non-commercial).
    ImageNetStart("mobilenet_v2-ecbe2b5.pth", ("official",),
                  "mobilenet_v2_official",
                  "https://huggingface.co/tianzhi/FCOS/resolve/main/"
                  "mobilenet_v2-ecbe2b5.pth?download=true",
                  "the FCOS authors: MobileNetV2",
                  "none stated for the file (published beside the official "
                  "FCOS weights, whose LICENSE is non-commercial)"),
    # AdelaiDet's configs: detectron2's copies (X-101-64x4d.pkl through
    # detectron2's catalog, Detectron's file).
    ImageNetStart("R-50.pkl", ("adelaidet",), "detectron_pkl",
                  _DETECTRON2 + "MSRA/R-50.pkl",
                  "detectron2: MSRA's ResNet-50, converted",
                  _CC_BY_SA.format("detectron2")),
    ImageNetStart("R-101.pkl", ("adelaidet",), "detectron_pkl",
                  _DETECTRON2 + "MSRA/R-101.pkl",
                  "detectron2: MSRA's ResNet-101, converted",
                  _CC_BY_SA.format("detectron2")),
    ImageNetStart("X-101-32x8d.pkl", ("adelaidet",), "detectron_pkl",
                  _DETECTRON2 + "FAIR/X-101-32x8d.pkl",
                  "detectron2: FAIR's ResNeXt-101-32x8d (Caffe2; takes "
                  "std-normalised input)", _CC_BY_SA.format("detectron2")),
    ImageNetStart("X-101-64x4d.pkl", ("adelaidet",), "detectron_pkl",
                  _DETECTRON + "FBResNeXt/X-101-64x4d.pkl",
                  "Detectron: FB's ResNeXt-101-64x4d (Torch7), converted",
                  _CC_BY_SA.format("Detectron")),
    # torchvision's ResNet-50 (IMAGENET1K_V1; the sha256 prefix is in the
    # file name): torchvision's FCOS and this project's default config
    # (configs/fcos_imprv_r50_1x.py) start from it; so do mmdetection's
    # GFL / VFNet configs (`torchvision://resnet50`).
    ImageNetStart("resnet50-0676ba61.pth", ("torchvision", "mmdet"),
                  "torchvision_resnet",
                  "https://download.pytorch.org/models/resnet50-0676ba61.pth",
                  "torchvision: ResNet-50 (IMAGENET1K_V1)", "BSD-3-Clause",
                  checksum="0676ba61", config="configs/fcos_imprv_r50_1x.py"),
    # mmdetection's `torchvision://resnet101` and `open-mmlab://
    # resnext101_32x4d` (mmcv's model_zoo/open_mmlab.json).
    ImageNetStart("resnet101-63fe2227.pth", ("mmdet",), "torchvision_resnet",
                  "https://download.pytorch.org/models/resnet101-63fe2227.pth",
                  "torchvision: ResNet-101 (IMAGENET1K_V1)", "BSD-3-Clause",
                  checksum="63fe2227"),
    ImageNetStart("resnext101_32x4d-a5af3160.pth", ("mmdet",),
                  "torchvision_resnet",
                  "https://download.openmmlab.com/pretrain/third_party/"
                  "resnext101_32x4d-a5af3160.pth",
                  "open-mmlab: ResNeXt-101 32x4d (torchvision's names)",
                  "none stated for the file (mmcv's open_mmlab.json lists "
                  "it; mmdetection is Apache-2.0)", checksum="a5af3160"),
    ImageNetStart("resnext101_64x4d-ee2c6f71.pth", ("mmdet",),
                  "torchvision_resnet",
                  "https://download.openmmlab.com/pretrain/third_party/"
                  "resnext101_64x4d-ee2c6f71.pth",
                  "open-mmlab: ResNeXt-101 64x4d (torchvision's names)",
                  "none stated for the file (mmcv's open_mmlab.json lists "
                  "it; mmdetection is Apache-2.0)", checksum="ee2c6f71"),
)


def imagenet_start(release: Release) -> ImageNetStart:
  """The ImageNet file `release`'s training starts from."""
  return next(i for i in IMAGENET_STARTS
              if i.file == release.imagenet and release.source in i.sources)


def names(*sources: str) -> list[str]:
  """The models of `sources` (all by default), in the registry's order."""
  return [n for n, r in MODELS.items() if not sources or r.source in sources]


def get(name: str, *sources: str) -> Release:
  """The release `name` of one of `sources` (any by default); refuses an
  unknown name in one line that lists the known ones."""
  known = names(*sources)
  if name not in known:
    what = [SOURCES[s] for s in sources]
    what = (" or ".join([", ".join(what[:-1]), what[-1]]) if len(what) > 2
            else " or ".join(what) or "released FCOS")
    raise ConfigError(f"Unknown {what} model {name!r}; known: "
                      f"{', '.join(known)}.")
  return MODELS[name]


# --- docs/model_zoo.md ------------------------------------------------------


def _value(v) -> str:
  return f'"{v}"' if isinstance(v, str) else repr(v)


def architecture(release: Release) -> str:
  """The preset and its overridden fields, e.g. `official`, depth=101."""
  fields = [f"{k}={_value(v)}" for k, v in release.overrides.items()]
  return ", ".join([f"`{release.preset}`", *fields])


def _schedule(release: Release) -> str:
  if release.schedule not in SCHEDULES:
    return release.schedule
  steps, decay = SCHEDULES[release.schedule]
  return (f"{release.schedule}: {steps // 1000}k steps, LR /10 at "
          f"{', '.join(f'{d // 1000}k' for d in decay)}")


def _scales(release: Release) -> str:
  if isinstance(release.scales, tuple):
    return f"{release.scales[0]}-{release.scales[1]}"
  return str(release.scales)


def _file(url: str) -> str:
  """The file name of a download URL."""
  return url.rsplit("/", 1)[-1].split("?")[0]


def convert_command(release: Release) -> str:
  """The command that makes the downloaded weights of `release` a run."""
  if release.source == "torchvision":
    convert = f"fcos-convert --torchvision {_file(release.url)}"
  elif release.source == "mmdet":
    convert = (f"fcos-convert --mmdet {_file(release.url)} "
               f"--config configs/zoo.py:{release.name}")
  else:
    convert = (f"fcos-convert --{release.source} {release.name}.pth "
               f"--config configs/zoo.py:{release.name}")
  return f"{convert} --workdir runs/{release.name}"


def commands(release: Release) -> str:
  """The convert + evaluate command of `release`."""
  return (f"{convert_command(release)} && fcos-evaluate "
          f"--workdir runs/{release.name}")


def train_command(start: ImageNetStart) -> str:
  """The command that starts a run from the ImageNet file `start`."""
  config = start.config or "configs/zoo.py:" + next(
      r.name for r in MODELS.values()
      if r.imagenet == start.file and r.source in start.sources)
  workdir = config.rsplit(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".py")
  return (f"fcos-train --config {config} --workdir runs/{workdir} "
          f"--config.init_backbone={start.file}")


def _checksum(checksum: Optional[str]) -> str:
  return (f"sha256 {checksum}... (in the file name)" if checksum
          else "none published")


def markdown() -> str:
  """docs/model_zoo.md."""
  lines = [
      "# Model zoo",
      "",
      "<!-- Generated from fcos_jax/registry.py by",
      "     python -m fcos_jax.registry > docs/model_zoo.md",
      "     Do not edit by hand: edit the registry and run that command. -->",
      "",
      "Every released FCOS-family model this project converts, from one",
      "table (`fcos_jax/registry.py`; regenerate this page with",
      "`python -m fcos_jax.registry > docs/model_zoo.md`). The AP is the",
      "one its authors publish (COCO minival / val2017): **published, not",
      "measured here**.",
      "",
      "**Licence.** The official FCOS and AdelaiDet weights are licensed",
      "for **non-commercial use only** (the LICENSE of",
      f"[tianzhi0549/FCOS]({REPOSITORIES['official']}/blob/master/LICENSE):",
      "\"FCOS for non-commercial purposes\"; of",
      f"[aim-uofa/AdelaiDet]({REPOSITORIES['adelaidet']}/blob/master/"
      "LICENSE):",
      "\"AdelaiDet for non-commercial purposes\", commercial licences from",
      "its authors). torchvision's weights are BSD-3-Clause;",
      f"[mmdetection]({REPOSITORIES['mmdet']})'s are Apache-2.0.",
      "",
      "Each official, AdelaiDet or mmdetection model is a run config,",
      "`configs/zoo.py:NAME`: its architecture (what the released weights",
      "compute) and its training recipe (schedule, batch, training scales,",
      "ImageNet start). Convert and evaluate the released weights:",
      "",
      "```",
      "fcos-convert --official NAME.pth --config configs/zoo.py:NAME "
      "--workdir runs/NAME && fcos-evaluate --workdir runs/NAME",
      "```",
      "",
      "(`--adelaidet` for AdelaiDet's, `--mmdet` for mmdetection's",
      "GFL / VFNet / TOOD / ATSS",
      "with the file name of its weights; details in",
      "[predict_and_export.md](predict_and_export.md"
      "#the-official-fcos-and-adelaidet-models-as-runs)).",
      "Train one from ImageNet with the file of the ImageNet column",
      "([training.md](training.md#train-a-zoo-model-from-imagenet)):",
      "",
      "```",
      "fcos-train --config configs/zoo.py:NAME --workdir runs/NAME "
      "--config.init_backbone=PATH",
      "```",
      "",
      "torchvision's model converts with `--torchvision` into a run of",
      "`configs/torchvision_r50.py`, which trains it with this project's",
      "default recipe.",
      "",
      "Schedules are steps at the batch given (the LR 0.01 is the LR at that",
      "batch). Training scales: the short side, 800 or drawn from 640-800",
      "(AdelaiDet's detectron2 draws it from 640, 672, ..., 800; here from",
      "the range). The ImageNet files of the official configs are",
      "Detectron's (MSRA R-50 / R-101, FAIR ResNeXt); AdelaiDet's are",
      "detectron2's `ImageNetPretrained/` files of the same names (its",
      "X-101-32x8d.pkl takes std-normalised input). mmdetection's GFL",
      "models draw the short side from 480-800 (`mstrain`) and start from",
      "torchvision's ResNets and open-mmlab's ResNeXt-101 32x4d (the same",
      "names, format `torchvision_resnet`); mmdetection trains the BatchNorm",
      "affine of res3-res5 (statistics frozen), this project freezes it.",
      "Their dconv models use mmcv's `DCN`, v1 without a modulation mask",
      "(`dcn_modulated=False`; their README says dcnv2); these two, and the",
      "VFNet mdconv models, convert but do not yet train from their ImageNet",
      "file (the `torchvision_resnet` reader takes no deformable convs). Its",
      "VFNet",
      "models (the `vfnet` preset) draw the short side from 480-960",
      "(`mstrain`); its mdconv models have mmcv's DCNv2 in res3-res5 and as",
      "the towers' last conv (`dcn_modulated=True`, `head_dcn=True`). Its",
      "TOOD models (the `tood` preset,",
      "anchor-free; the anchor-based one adds box `anchor_deltas`) draw it",
      "from 480-800; its dconv TOOD models are not listed. Its ATSS models (the `atss_anchor` preset:",
      "box `anchor_deltas`, DeltaXYWH deltas from an 8-stride anchor) train",
      "at 800; mmdetection scores their detections prob x centre-ness,",
      "fcos_jax sqrt(prob x centre-ness) (the same ranking and AP;",
      "`--config.model.inference.score_combine=product` reports theirs).",
      "",
      "| model | source | published AP | schedule | batch | training scales "
      "| ImageNet start (format) | architecture: preset + fields |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in MODELS.values():
    lines.append(
        f"| {r.name} | {SOURCES[r.source]} | {r.ap} | {_schedule(r)} | "
        f"{r.batch} | {_scales(r)} | {r.imagenet} (`{r.init_format}`) | "
        f"{architecture(r)} |")
  lines += [
      "",
      "## Weights and commands",
      "",
      "| model | weights | checksum | licence | convert + evaluate |",
      "|---|---|---|---|---|",
  ]
  for r in MODELS.values():
    lines.append(
        f"| {r.name} | [{_file(r.url)}]({r.url}) "
        f"| {_checksum(r.checksum)} | {r.licence} | `{commands(r)}` |")
  return "\n".join(lines) + "\n"


# --- docs/weights.md --------------------------------------------------------


def weights_markdown() -> str:
  """docs/weights.md: every weights file the project loads, where it is
  published, its checksum and licence, and the command that uses it."""
  lines = [
      "# Weights",
      "",
      "<!-- Generated from fcos_jax/registry.py by",
      "     python -m fcos_jax.registry weights > docs/weights.md",
      "     Do not edit by hand: edit the registry and run that command. -->",
      "",
      "Every weights file this project loads: the released COCO detectors",
      "(torchvision's FCOS, the official FCOS, AdelaiDet's FCOS) and the",
      "ImageNet backbones their training starts from. For each: where it is",
      "published, its checksum where one is published, its licence, and the",
      "one command that makes it a run. Architectures, recipes and published",
      "AP: [model_zoo.md](model_zoo.md).",
      "",
      "**Licences differ.** The official FCOS and AdelaiDet weights are for",
      "**non-commercial use only** (the LICENSE of",
      f"[tianzhi0549/FCOS]({REPOSITORIES['official']}/blob/master/LICENSE):",
      "\"FCOS for non-commercial purposes\"; of",
      f"[aim-uofa/AdelaiDet]({REPOSITORIES['adelaidet']}/blob/master/"
      "LICENSE):",
      "\"AdelaiDet for non-commercial purposes\", commercial licences from",
      "its authors). torchvision's weights are BSD-3-Clause. The ImageNet",
      "files that Detectron's and detectron2's MODEL_ZOO.md list are",
      "CC BY-SA 3.0 (\"All models available for download through this",
      "document\").",
      "mmdetection's GFL, VFNet and TOOD weights are Apache-2.0.",
      "",
      "A `.pth` needs torch to read (`pip install \".[convert]\"`); a",
      "checksum given as a sha256 prefix is checked with",
      "`sha256sum FILE | cut -c1-8`. The commands run in the folder that",
      "holds the downloaded file.",
      "",
      "## COCO detectors",
      "",
      "| model | source | weights | checksum | licence | make it a run |",
      "|---|---|---|---|---|---|",
  ]
  for r in MODELS.values():
    lines.append(
        f"| {r.name} | {SOURCES[r.source]} | [{_file(r.url)}]({r.url}) | "
        f"{_checksum(r.checksum)} | {r.licence} | `{convert_command(r)}` |")
  lines += [
      "",
      "`fcos-evaluate --workdir runs/NAME` then measures its COCO AP;",
      "`fcos-predict --workdir runs/NAME --images ... --out ...` draws",
      "its detections ([predict_and_export.md](predict_and_export.md)).",
      "",
      "## ImageNet backbones",
      "",
      "The file a released model's config starts from, as that config",
      "names it (the official and AdelaiDet copies of a file of the same",
      "name are different downloads). The command trains from it",
      "([training.md](training.md#train-a-zoo-model-from-imagenet)).",
      "",
      "| file | for | what | weights | checksum | licence | start a run |",
      "|---|---|---|---|---|---|---|",
  ]
  for i in IMAGENET_STARTS:
    lines.append(
        f"| {i.file} | {', '.join(SOURCES[s] for s in i.sources)} | "
        f"{i.publisher} | [{_file(i.url)}]({i.url}) | "
        f"{_checksum(i.checksum)} | {i.licence} | `{train_command(i)}` |")
  return "\n".join(lines) + "\n"


PAGES = {"model_zoo": markdown, "weights": weights_markdown}


if __name__ == "__main__":
  import sys  # pylint: disable=import-outside-toplevel
  page = sys.argv[1] if len(sys.argv) > 1 else "model_zoo"
  if page not in PAGES:
    sys.exit(f"error: no page {page!r}; one of {', '.join(PAGES)}.")
  print(PAGES[page](), end="")
