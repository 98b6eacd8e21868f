"""The official FCOS checkpoints (tianzhi0549/FCOS, on maskrcnn-benchmark)
-> fcos_jax variables.

A released `.pth` holds {"model": state dict, ...} with names such as

  module.backbone.body.stem.conv1.weight        ResNet stem (+ .bn1.*)
  module.backbone.body.layer1.0.conv1.weight    res2 .. res5 = layer1 .. 4
  module.backbone.body.layer2.0.conv2.conv.weight / .offset.{weight,bias}
                                                 a DCNv2 3x3 (dcnv2 models)
  module.backbone.fpn.fpn_inner2 / fpn_layer2   1x1 lateral / 3x3 output, C3
  module.backbone.fpn.top_blocks.p6 / p7
  module.rpn.head.cls_tower.{0,1,3,4,...}       conv, GroupNorm (ReLU has no
  module.rpn.head.bbox_tower.*                   weights), 3 modules per conv
  module.rpn.head.cls_tower.9.conv.* / .offset.*  the tower's last conv in
                                                 dcnv2 models
  module.rpn.head.{cls_logits,bbox_pred,centerness}
  module.rpn.head.scales.{0..4}.scale           shape (1,)

The MobileNetV2 models' body is `module.backbone.body.features.{0..17}`
(`fcos_jax.convert.imagenet.mobilenet_v2_module_name`, "official").
Frozen BatchNorm keeps weight / bias / running_mean / running_var and has
no epsilon (MobileNetV2's BatchNorm2d has 1e-5). The class logits have 80
channels on COCO (no background), in the order of the COCO category ids:
label i is the i-th category by id, the order `coco_categories()` gives.

The released models, the ModelConfig that computes what each computed
(`published_config`) and the AP its authors report are those of
`fcos_jax.registry` whose source is "official".
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

import numpy as np
from flax import traverse_util

from fcos_jax import registry, storage
from fcos_jax.convert import safe_load
from fcos_jax.convert import torchvision as tv
from fcos_jax.model.config import (CAFFE_BGR_MEAN, RESUME_POLICY, DistanceBox,
                                   ModelConfig)
from fcos_jax.model.fcos import MODEL_STRIDES

# Fields that change what official weights compute, and their values there
# (bn_eps: 0 in the ResNets' FrozenBatchNorm2d, 1e-5 in MobileNetV2's
# BatchNorm2d; set in `convert_state_dict`).
_REQUIRED = dict(
    backbone_norm="frozen_bn", input_bgr=True, input_range=255.0,
    pixel_mean=CAFFE_BGR_MEAN, pixel_std=(1.0, 1.0, 1.0), head_norm="gn",
    gn_groups=32, use_scale=True, location_offset="half",
    location_stride="nominal", strides=MODEL_STRIDES, dcn_modulated=True,
    box=DistanceBox())

# What a converted model may change: the fields of the parts that do not
# touch the parameters (inference, numerics: RESUME_POLICY "free").
FREE_PARTS = tuple(p for p, policy in RESUME_POLICY.items() if policy == "free")
INFERENCE_FIELDS = tuple(f.name for p in FREE_PARTS for f in
                         dataclasses.fields(getattr(ModelConfig(), p)))


def inference_fields(cfg: ModelConfig) -> dict:
  """{field: value} of `cfg`'s free parts (see FREE_PARTS)."""
  return {k: v for p in FREE_PARTS
          for k, v in dataclasses.asdict(getattr(cfg, p)).items()}

def published_config(name: str, **overrides) -> ModelConfig:
  """The ModelConfig of the released model `name` (80 COCO classes), with
  `overrides` (e.g. inference fields, or a small width for tests)."""
  return registry.get(name, "official").model_config(**overrides)


def find_published(cfg: ModelConfig, models=None, config_fn=None) -> str:
  """The released model whose architecture `cfg` describes (inference
  fields may differ); refuses naming the nearest model's differing fields.

  models, config_fn: another zoo's model names and config function
  (AdelaiDet's); by default the official ones.
  """
  models = registry.names("official") if models is None else models
  config_fn = published_config if config_fn is None else config_fn
  inference = inference_fields(cfg)
  diffs = {}
  for name in models:
    want = config_fn(name, **inference)
    diffs[name] = [f"{f.name}={getattr(cfg, f.name)!r} (needs "
                   f"{getattr(want, f.name)!r})"
                   for f in dataclasses.fields(cfg)
                   if getattr(cfg, f.name) != getattr(want, f.name)]
    if not diffs[name]:
      return name
  nearest = min(diffs, key=lambda n: len(diffs[n]))
  raise ValueError(
      f"config.model describes none of the models {sorted(models)}; the "
      f"nearest, {nearest}, differs in: {'; '.join(diffs[nearest])}. Use "
      "configs/zoo.py:MODEL_NAME (only the inference fields may "
      "change).")


# --- Loading -----------------------------------------------------------------


def load_official_state_dict(state_dict) -> dict[str, np.ndarray]:
  """A path (.pth via torch, .npz) or a mapping -> {name: array}, with the
  checkpoint's {"model": ...} wrapper and DataParallel's `module.` prefix
  removed."""
  if isinstance(state_dict, (str, os.PathLike)):
    path = os.fspath(state_dict)
    if path.endswith(".npz"):
      return _strip(tv.load_state_dict(path))
    raw = storage.read_bytes(path)  # First: a missing file is named as such.
    tv.require_torch(path)
    state_dict = safe_load.torch_load(path, raw)
  if isinstance(state_dict, Mapping) and isinstance(
      state_dict.get("model"), Mapping):
    state_dict = state_dict["model"]
  return _strip(tv.load_state_dict(state_dict))


def _strip(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k[len("module."):] if k.startswith("module.") else k: v
          for k, v in sd.items()}


# --- Names -------------------------------------------------------------------

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean",
       "var": "running_var"}
_LEAF = {"kernel": "weight", "bias": "bias"}


def _mobilenet_v2_name(path: tuple[str, ...]) -> str:
  """The official MNV2 body: features.{i}.conv.{j} (imagenet's names)."""
  from fcos_jax.convert import imagenet  # pylint: disable=import-outside-toplevel
  leaf = "weight" if path[-1] == "kernel" else _BN[path[-1]]
  return f"{imagenet.mobilenet_v2_module_name(path[:-1], 'official')}.{leaf}"


def _backbone_name(path: tuple[str, ...]) -> str:
  *mods, leaf = path
  if mods[0] == "stem":
    return f"stem.{ {'conv': 'conv1', 'bn': 'bn1'}[mods[1]]}.{_leaf(mods, leaf)}"
  layer = f"layer{int(mods[0][3:]) - 1}.{int(mods[1][5:])}"
  sub = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"
         }.get(mods[2], mods[2])
  # A DCNv2 conv2 keeps its submodules: conv2.conv.*, conv2.offset.*.
  return ".".join([layer, sub, *mods[3:], _leaf(mods, leaf)])


def _leaf(mods, leaf):
  is_bn = mods[-1].startswith("bn") or mods[-1] == "downsample_bn"
  return _BN[leaf] if is_bn else _LEAF[leaf]


def _fpn_name(path: tuple[str, ...]) -> str:
  module, leaf = path
  if module in ("p6", "p7"):
    name = f"top_blocks.{module}"
  else:  # C3..C5 are the FPN's inputs 2..4 (input 1, C2, is unused).
    kind = "fpn_inner" if module.startswith("lateral") else "fpn_layer"
    name = f"{kind}{int(module[-1]) - 1}"
  return f"{name}.{_LEAF[leaf]}"


def _head_name(path: tuple[str, ...]) -> str:
  if path[0].startswith("scale_"):  # A per-level scalar, no leaf below.
    return f"scales.{path[0][len('scale_'):]}.scale"
  module, *sub, leaf = path
  m = re.fullmatch(r"(cls|box)_(tower|norm)_(\d+)", module)
  if m:
    tower = "cls_tower" if m[1] == "cls" else "bbox_tower"
    # Sequential(conv, GroupNorm, ReLU) x n; a DCNv2 conv has .conv/.offset.
    index = 3 * int(m[3]) + (m[2] == "norm")
    return ".".join([tower, str(index), *sub,
                     "weight" if leaf in ("kernel", "scale") else "bias"])
  name = {"box_regression": "bbox_pred"}.get(module, module)
  return f"{name}.{_LEAF[leaf]}"


def state_dict_names(cfg: ModelConfig) -> dict:
  """{official state-dict name (no `module.`): (our parameter path, our
  shape)} for `FCOS(cfg)`; shapes in our layout (conv kernels HWIO)."""
  body = (_mobilenet_v2_name if cfg.backbone == "mobilenet_v2"
          else _backbone_name)
  prefix = {"backbone": ("backbone.body.", body),
            "fpn": ("backbone.fpn.", _fpn_name),
            "head": ("rpn.head.", _head_name)}
  targets = {}
  for path, shape in tv._param_shapes(cfg).items():  # pylint: disable=protected-access
    pre, name = prefix[path[0]]
    targets[pre + name(path[1:])] = (path, shape)
  return targets


def official_shape(shape, path: tuple[str, ...]) -> tuple[int, ...]:
  """Our shape of the parameter at `path` -> the official checkpoint's."""
  if path[-1].startswith("scale_"):
    return (1,)
  return tv.torch_shape(shape, path[-1])


# --- Conversion --------------------------------------------------------------


def convert_state_dict(state_dict, cfg: ModelConfig) -> dict:
  """An official FCOS state dict -> {"params": ...} for `FCOS(cfg)`.

  cfg: `published_config(name)` of the checkpoint's model (or the same
  architecture at any width, e.g. in tests). A missing, unexpected or
  mis-shaped tensor is refused with the full list.
  """
  required = dict(_REQUIRED,
                  bn_eps=1e-5 if cfg.backbone == "mobilenet_v2" else 0.0)
  if cfg.backbone == "mobilenet_v2" and cfg.backbone_norm == "bn":
    # Trainable BatchNorm has FrozenBatchNorm's parameters and, outside
    # training, its output: the MNV2 models train theirs.
    required["backbone_norm"] = "bn"
  tv._check_cfg(cfg, required, "the official FCOS checkpoints")  # pylint: disable=protected-access
  sd = load_official_state_dict(state_dict)
  # Scale is a (1,) tensor there and a scalar here.
  sd = {k: (v.reshape(()) if re.fullmatch(r"rpn\.head\.scales\.\d+\.scale", k)
            and v.shape == (1,) else v) for k, v in sd.items()}
  flat = tv._convert(sd, state_dict_names(cfg), "fcos_jax FCOS (official "  # pylint: disable=protected-access
                     "layout)")
  return {"params": traverse_util.unflatten_dict(flat)}


def convert_published(state_dict, name: str, **inference):
  """The released model `name`'s checkpoint -> (cfg, params, categories):
  80 COCO categories, label i the i-th by id (the official order)."""
  bad = sorted(set(inference) - set(INFERENCE_FIELDS))
  if bad:
    raise ValueError(f"convert_published: {bad} are not inference fields "
                     f"({INFERENCE_FIELDS}).")
  cfg = published_config(name, **inference)
  params = convert_state_dict(state_dict, cfg)["params"]
  return cfg, params, tv.coco_categories()
