"""ImageNet backbones -> backbone params (variables["params"]["backbone"]).

- `convert_torchvision_backbone`: torchvision's ImageNet `resnet*`,
  `resnext50_32x4d`, `resnext101_32x8d`, `resnext101_64x4d` (cfg.backbone
  "resnet", groups / width_per_group as `TORCHVISION_ARCHS`) or
  `mobilenet_v2` (cfg.backbone "mobilenet_v2"; `features.18` and the
  classifier are not part of the FCOS body and are ignored).
  `convert_mobilenet_v2_state_dict(..., layout="official")` reads the
  MobileNetV2 ImageNet weights of the official MNV2 configs.
- `convert_detectron_pickle`: the Detectron (caffe2) ImageNet pickles that
  the official FCOS configs start from: MSRA `R-50.pkl`, `R-101.pkl` (stride
  in the 1x1) and FAIR `X-101-32x8d.pkl`, `X-101-64x4d.pkl` (stride in the
  3x3), blob names `conv1_w`, `res_conv1_bn_{s,b}`,
  `res{2..5}_{i}_branch{1,2a,2b,2c}_w` and `..._bn_{s,b}`. Their BatchNorm
  is folded into an affine (scale, bias): mean 0, variance 1, and the
  FrozenBatchNorm without epsilon of maskrcnn-benchmark (cfg.bn_eps = 0).
  The file is read by `load_detectron_pickle`, an unpickler that builds
  only NumPy arrays and plain containers: a pickle that would import or
  call anything else is refused before it runs.

Conversion is strict: a missing, unexpected or mis-shaped tensor is refused
with the full list. Put the result into a model with
`fcos_jax.convert.torchvision.merge_backbone`.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Mapping

import numpy as np
from flax import traverse_util

from fcos_jax import errors, storage
from fcos_jax.convert import safe_load
from fcos_jax.convert import torchvision as tv
from fcos_jax.model.config import (CAFFE_BGR_MEAN, IMAGENET_RGB_MEAN,
                                   IMAGENET_RGB_STD, ModelConfig)
from fcos_jax.model.mobilenet_v2 import block_specs

# torchvision ImageNet architectures -> the ModelConfig fields they fix.
TORCHVISION_ARCHS = {
    "resnet18": dict(backbone="resnet", depth=18),
    "resnet34": dict(backbone="resnet", depth=34),
    "resnet50": dict(backbone="resnet", depth=50),
    "resnet101": dict(backbone="resnet", depth=101),
    "resnet152": dict(backbone="resnet", depth=152),
    "resnext50_32x4d": dict(backbone="resnet", depth=50, groups=32,
                            width_per_group=4),
    "resnext101_32x8d": dict(backbone="resnet", depth=101, groups=32,
                             width_per_group=8),
    "resnext101_64x4d": dict(backbone="resnet", depth=101, groups=64,
                             width_per_group=4),
    "mobilenet_v2": dict(backbone="mobilenet_v2"),
}

_TORCHVISION_INPUT = dict(input_bgr=False, input_range=1.0,
                          pixel_mean=IMAGENET_RGB_MEAN,
                          pixel_std=IMAGENET_RGB_STD)
_MNV2_REQUIRED = dict(_TORCHVISION_INPUT, backbone="mobilenet_v2",
                      bn_eps=1e-5, backbone_norm="frozen_bn")
_DETECTRON_REQUIRED = dict(backbone="resnet", bn_eps=0.0,
                           backbone_norm="frozen_bn", input_bgr=True,
                           input_range=255.0, pixel_mean=CAFFE_BGR_MEAN,
                           pixel_std=(1.0, 1.0, 1.0))

_BN_TORCH = {"scale": "weight", "bias": "bias", "mean": "running_mean",
             "var": "running_var"}


# ---------------------------------------------------------------- MobileNetV2

def mobilenet_v2_module_name(path: tuple[str, ...], layout: str) -> str:
  """Our MobileNetV2 module path (block{i}, {expand,dw,project}_{conv,bn})
  -> its module name in torchvision's `mobilenet_v2` ("torchvision") or in
  the official FCOS body ("official", `features.i.conv.{0,1,3,4,6,7}`)."""
  if path[0] == "stem":
    return "features.0." + {"conv": "0", "bn": "1"}[path[1]]
  i = int(path[0][len("block"):])
  expands = block_specs()[i - 1][3] != 1
  part = path[1]
  if layout == "torchvision":
    if expands:
      index = {"expand_conv": "0.0", "expand_bn": "0.1", "dw_conv": "1.0",
               "dw_bn": "1.1", "project_conv": "2", "project_bn": "3"}[part]
    else:
      index = {"dw_conv": "0.0", "dw_bn": "0.1", "project_conv": "1",
               "project_bn": "2"}[part]
  elif layout == "official":  # Sequential(conv, bn, relu6, ...) flat.
    order = (("expand_conv", "expand_bn") if expands else ()) + (
        "dw_conv", "dw_bn", "project_conv", "project_bn")
    # conv, bn, relu6 per stage; the projection has no ReLU6.
    index = str(3 * (order.index(part) // 2) + order.index(part) % 2)
  else:
    raise ValueError(f"layout={layout!r}: use 'torchvision' or 'official'.")
  return f"features.{i}.conv.{index}"


def mobilenet_v2_state_dict_names(cfg: ModelConfig, layout="torchvision"):
  """{state-dict name: (our path under backbone, our shape)}."""
  targets = {}
  for path, shape in tv.imagenet_backbone_shapes(cfg).items():
    module = mobilenet_v2_module_name(path[:-1], layout)
    leaf = "weight" if path[-1] == "kernel" else _BN_TORCH[path[-1]]
    targets[f"{module}.{leaf}"] = (path, shape)
  return targets


def convert_mobilenet_v2_state_dict(state_dict, cfg: ModelConfig,
                                    layout: str = "torchvision") -> dict:
  """ImageNet MobileNetV2 state dict -> backbone params.

  layout "torchvision": torchvision's `mobilenet_v2` (RGB ImageNet input
  required). "official": the names of the official FCOS body, which are
  those of the ImageNet weights its MNV2 configs start from
  (mobilenet_v2-ecbe2b5.pth of tonylins/pytorch-mobilenet-v2); the official
  recipe feeds them its caffe input unchanged, so the input fields are not
  checked.
  """
  required = dict(_MNV2_REQUIRED)
  if cfg.backbone_norm == "bn":  # FrozenBatchNorm's parameters, trained.
    required["backbone_norm"] = "bn"
  if layout == "official":
    required = {k: v for k, v in required.items()
                if k not in _TORCHVISION_INPUT}
  tv._check_cfg(cfg, required, f"a {layout} MobileNetV2")  # pylint: disable=protected-access
  last = f"features.{len(block_specs()) + 1}."  # The 1280-wide 1x1 conv.
  sd = {k: v for k, v in tv.load_state_dict(state_dict).items()
        if not k.startswith((last, "classifier."))}
  flat = tv._convert(sd, mobilenet_v2_state_dict_names(cfg, layout),  # pylint: disable=protected-access
                     "a MobileNetV2 backbone")
  return traverse_util.unflatten_dict(flat)


def convert_torchvision_backbone(state_dict, cfg: ModelConfig) -> dict:
  """torchvision ImageNet ResNet / ResNeXt / MobileNetV2 -> backbone params,
  chosen by cfg.backbone (ResNeXt: cfg.groups, cfg.width_per_group)."""
  if cfg.backbone == "mobilenet_v2":
    return convert_mobilenet_v2_state_dict(state_dict, cfg)
  return tv.convert_resnet_state_dict(state_dict, cfg)


# -------------------------------------------------------- Detectron pickles

# (module, name) pairs the unpickler may build: NumPy arrays, dtypes and
# scalars, and OrderedDict; `_codecs.encode` is how pickle protocol 2 from
# Python 3 spells a bytes object (the array data; Python 2 used str). Numpy
# 1.x and 2.x module names both map to the installed module. Everything
# else (os.system, eval, any class) is refused by name before it is
# imported.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
}


class _ArraysOnlyUnpickler(pickle.Unpickler):

  def __init__(self, file, source: str):
    super().__init__(file, encoding="latin1")  # Detectron wrote Python 2.
    self._source = source

  def find_class(self, module, name):
    target = _ALLOWED_GLOBALS.get((module, name))
    if target is None:
      raise safe_load.refused(self._source, f"{module}.{name}")
    import importlib  # pylint: disable=import-outside-toplevel
    return getattr(importlib.import_module(target[0]), target[1])


def load_detectron_pickle(source) -> dict[str, np.ndarray]:
  """A Detectron `.pkl` (path, local or URL) or an already loaded mapping
  -> {blob name: array}; blobs may sit under a "blobs" key."""
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    try:
      data = _ArraysOnlyUnpickler(io.BytesIO(storage.read_bytes(path)),
                                  path).load()
    except safe_load.RefusedPickle:
      raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, UnicodeDecodeError) as e:
      raise errors.DataError(
          f"{path}: not a readable Detectron weights pickle ("
          f"{type(e).__name__}: {str(e)[:200]}); it may be truncated or of "
          "another kind (see config.init_backbone_format).") from None
  else:
    path, data = "the given mapping", source
  if isinstance(data, Mapping) and "blobs" in data:
    data = data["blobs"]
  if not isinstance(data, Mapping):
    raise errors.DataError(f"{path}: expected a dict of blobs (or {{'blobs': "
                           f"...}}), got {type(data).__name__}.")
  bad = sorted(str(k) for k, v in data.items()
               if not isinstance(v, np.ndarray) or v.dtype == object)
  if bad:
    raise errors.DataError(f"{path}: these blobs are not numeric arrays: "
                           f"{bad[:20]}.")
  return dict(data)


def detectron_blob_names(cfg: ModelConfig) -> dict:
  """{caffe2 blob name: (our path under backbone, our shape)} of the
  learned tensors (FrozenBatchNorm mean / var are not in the pickles)."""
  targets = {}
  for path, shape in tv.imagenet_backbone_shapes(cfg).items():
    *mods, leaf = path
    if leaf in ("mean", "var"):
      continue
    if mods[0] == "stem":
      blob = {"conv": "conv1", "bn": "res_conv1_bn"}[mods[1]]
    else:
      stage, block = mods[0], int(mods[1][len("block"):])
      branch = {"conv1": "branch2a", "bn1": "branch2a_bn",
                "conv2": "branch2b", "bn2": "branch2b_bn",
                "conv3": "branch2c", "bn3": "branch2c_bn",
                "downsample_conv": "branch1", "downsample_bn": "branch1_bn",
                }[mods[2]]
      blob = f"{stage}_{block}_{branch}"
    suffix = {"kernel": "w", "scale": "s", "bias": "b"}[leaf]
    targets[f"{blob}_{suffix}"] = (path, shape)
  return targets


def _is_detectron_extra(name: str) -> bool:
  """Blobs of the pickles that are not backbone weights: the ImageNet
  classifier (fc1000 in MSRA's, pred in FAIR's) and solver state."""
  return (name.startswith(("fc1000_", "pred_")) or name.endswith("_momentum")
          or "weight_order" in name)


def convert_detectron_pickle(source, cfg: ModelConfig) -> dict:
  """Detectron ImageNet pickle -> backbone params.

  cfg: caffe input (BGR 0..255 minus the caffe mean), bn_eps 0, the
  pickle's depth; MSRA ResNets (groups 1) have the stride in the 1x1
  (stride_in_1x1=True), FAIR ResNeXts (groups 32 / 64) in the 3x3.
  """
  required = dict(_DETECTRON_REQUIRED, stride_in_1x1=cfg.groups == 1)
  bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in required.items()
         if getattr(cfg, k) != v]
  if bad:
    raise errors.ConfigError(
        "ModelConfig is not compatible with a Detectron ImageNet pickle: " +
        "; ".join(bad) + ". Use the official preset's backbone fields "
        "(fcos_jax.model.config.official(), stride_in_1x1=False for "
        "ResNeXt).")
  blobs = {k: v for k, v in load_detectron_pickle(source).items()
           if not _is_detectron_extra(k)}
  kind = (f"ResNeXt-{cfg.depth} {cfg.groups}x{cfg.width_per_group}d"
          if cfg.groups > 1 else f"ResNet-{cfg.depth}")
  flat = tv._convert(blobs, detectron_blob_names(cfg),  # pylint: disable=protected-access
                     f"a {kind} backbone")
  # The folded BatchNorm: identity statistics.
  for path in list(flat):
    if path[-1] == "scale":
      flat[path[:-1] + ("mean",)] = np.zeros_like(flat[path])
      flat[path[:-1] + ("var",)] = np.ones_like(flat[path])
  return traverse_util.unflatten_dict(flat)
