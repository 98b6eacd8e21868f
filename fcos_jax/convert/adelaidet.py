"""AdelaiDet's FCOS checkpoints (aim-uofa/AdelaiDet, on detectron2) ->
fcos_jax variables.

The same network as the official FCOS_imprv models, with detectron2's names
and two numeric differences: FrozenBatchNorm has epsilon 1e-5, and the
input mean is detectron2's BGR [103.530, 116.280, 123.675].

  backbone.bottom_up.stem.conv1.weight / .conv1.norm.*   (norm inside conv)
  backbone.bottom_up.res2.0.conv1.weight ... res5        .shortcut(.norm).*
  backbone.bottom_up.res4.0.conv2.weight + .conv2_offset.{weight,bias}
                                                          (DCNv2 blocks)
  backbone.fpn_lateral3..5, backbone.fpn_output3..5, backbone.top_block.p6/p7
  proposal_generator.fcos_head.{cls,bbox}_tower.{0,1,3,...}  (conv, GN, ReLU;
      a DCNv2 tower conv keeps .conv / .offset), .cls_logits, .bbox_pred,
      .ctrness, .scales.{0..4}.scale

The checkpoint may carry `pixel_mean` / `pixel_std` buffers (older
detectron2); they are checked against the config and dropped.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from fcos_jax import registry
from fcos_jax.convert import official
from fcos_jax.convert import torchvision as tv
from fcos_jax.model.config import CenternessQuality, ModelConfig
from fcos_jax.registry import DETECTRON2_BGR_MEAN

_REQUIRED = dict(official._REQUIRED, backbone="resnet", bn_eps=1e-5,  # pylint: disable=protected-access
                 pixel_mean=DETECTRON2_BGR_MEAN, p6_from="p5",
                 quality=CenternessQuality(), norm_reg_targets=True)
del _REQUIRED["pixel_std"]  # 1, or the ImageNet std for X-101-32x8d.


def published_config(name: str, **overrides) -> ModelConfig:
  """The ModelConfig of AdelaiDet's released model `name` (80 classes)."""
  return registry.get(name, "adelaidet").model_config(**overrides)


_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean",
       "var": "running_var"}
_LEAF = {"kernel": "weight", "bias": "bias"}


def _backbone_name(path: tuple[str, ...]) -> str:
  *mods, leaf = path
  if mods[0] == "stem":  # stem/conv, stem/bn
    return "stem.conv1." + (_LEAF[leaf] if mods[1] == "conv"
                            else f"norm.{_BN[leaf]}")
  block = f"{mods[0]}.{int(mods[1][5:])}"
  module = mods[2]
  if module == "downsample_conv":
    return f"{block}.shortcut.{_LEAF[leaf]}"
  if module == "downsample_bn":
    return f"{block}.shortcut.norm.{_BN[leaf]}"
  if module.startswith("bn"):  # bn{j} is conv{j}'s norm.
    return f"{block}.conv{module[2:]}.norm.{_BN[leaf]}"
  if len(mods) == 4:  # A DCNv2 conv2: conv2/conv, conv2/offset.
    sub = "conv2" if mods[3] == "conv" else "conv2_offset"
    return f"{block}.{sub}.{_LEAF[leaf]}"
  return f"{block}.{module}.{_LEAF[leaf]}"


def _fpn_name(path: tuple[str, ...]) -> str:
  module, leaf = path
  if module in ("p6", "p7"):
    return f"top_block.{module}.{_LEAF[leaf]}"
  kind = "fpn_lateral" if module.startswith("lateral") else "fpn_output"
  return f"{kind}{module[-1]}.{_LEAF[leaf]}"


def _head_name(path: tuple[str, ...]) -> str:
  name = official._head_name(path)  # pylint: disable=protected-access
  return re.sub(r"^centerness\.", "ctrness.", name)


def state_dict_names(cfg: ModelConfig) -> dict:
  """{AdelaiDet state-dict name: (our parameter path, our shape)}."""
  prefix = {"backbone": ("backbone.bottom_up.", _backbone_name),
            "fpn": ("backbone.", _fpn_name),
            "head": ("proposal_generator.fcos_head.", _head_name)}
  targets = {}
  for path, shape in tv._param_shapes(cfg).items():  # pylint: disable=protected-access
    pre, name = prefix[path[0]]
    targets[pre + name(path[1:])] = (path, shape)
  return targets


def convert_state_dict(state_dict, cfg: ModelConfig) -> dict:
  """An AdelaiDet FCOS state dict (or its checkpoint, {"model": ...}) ->
  {"params": ...} for `FCOS(cfg)`; refuses with the full list of missing,
  unexpected and mis-shaped tensors."""
  tv._check_cfg(cfg, _REQUIRED, "AdelaiDet's FCOS checkpoints")  # pylint: disable=protected-access
  sd = official.load_official_state_dict(state_dict)
  for key, want in (("pixel_mean", cfg.pixel_mean),
                    ("pixel_std", cfg.pixel_std)):
    if key in sd:
      got = np.asarray(sd.pop(key)).reshape(-1)
      if not np.allclose(got, want, atol=1e-3):
        raise ValueError(
            f"The checkpoint's {key} is {got.tolist()}, the config's "
            f"{list(want)}: set model.{key} to the checkpoint's.")
  sd = {k: (v.reshape(()) if k.startswith("proposal_generator.fcos_head."
                                          "scales.") and v.shape == (1,)
            else v) for k, v in sd.items()}
  flat = tv._convert(sd, state_dict_names(cfg), "fcos_jax FCOS (AdelaiDet "  # pylint: disable=protected-access
                     "layout)")
  return {"params": traverse_util.unflatten_dict(flat)}


def find_published(cfg: ModelConfig) -> str:
  """The AdelaiDet model `cfg` describes; refuses naming the nearest."""
  return official.find_published(cfg, registry.names("adelaidet"),
                                 published_config)


def convert_published(state_dict, name: str, **inference):
  """AdelaiDet's model `name` -> (cfg, params, the 80 COCO categories)."""
  cfg = published_config(name, **inference)
  return cfg, convert_state_dict(state_dict, cfg)["params"], tv.coco_categories()
