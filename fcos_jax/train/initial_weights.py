"""Parameters a run starts from: the backbone from an ImageNet checkpoint."""

from __future__ import annotations

import jax

from fcos_jax import errors
from fcos_jax.convert import imagenet
from fcos_jax.convert import torchvision as tv_convert
from fcos_jax.model.config import ModelConfig

FORMATS = ("torchvision_resnet", "torchvision_imagenet", "detectron_pkl",
           "mobilenet_v2_official", "torchvision_fcos")


def load_initial_params(params, path: str, fmt: str, cfg: ModelConfig):
  """`params` with the backbone (or the whole model) read from `path`.

  fmt "torchvision_resnet": a torchvision ImageNet ResNet / ResNeXt state
  dict (`.pth`, needs torch; or an `.npz` of the same names);
  "torchvision_imagenet": the same, or torchvision's mobilenet_v2 when
  cfg.backbone is "mobilenet_v2"; "detectron_pkl": a Detectron ImageNet
  pickle (MSRA R-50.pkl / R-101.pkl, FAIR X-101-32x8d.pkl / X-101-64x4d.pkl;
  caffe input, bn_eps 0); "mobilenet_v2_official": the MobileNetV2
  ImageNet weights of the official MNV2 configs (mobilenet_v2-ecbe2b5.pth,
  the official body's names); "torchvision_fcos": a whole torchvision FCOS
  state dict (torchvision preset only).
  """
  if fmt not in FORMATS:
    raise errors.ConfigError(f"config.init_backbone_format={fmt!r}: use one of {FORMATS}.")
  state_dict = path  # The converters read .pth / .npz / .pkl, local or a URL.
  params = jax.device_get(params)
  if fmt == "torchvision_fcos":
    return tv_convert.convert_fcos_state_dict(state_dict, cfg)["params"]
  if fmt == "detectron_pkl":
    backbone = imagenet.convert_detectron_pickle(state_dict, cfg)
  elif fmt == "mobilenet_v2_official":
    backbone = imagenet.convert_mobilenet_v2_state_dict(state_dict, cfg,
                                                        layout="official")
  elif fmt == "torchvision_imagenet":
    backbone = imagenet.convert_torchvision_backbone(state_dict, cfg)
  else:
    backbone = tv_convert.convert_resnet_state_dict(state_dict, cfg)
  return tv_convert.merge_backbone({"params": params}, backbone)["params"]
