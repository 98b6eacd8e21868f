"""torchvision weights -> fcos_jax variables.

- `convert_fcos_state_dict`: `torchvision.models.detection.fcos_resnet50_fpn`
  (whole detector) -> {"params": ...} for `FCOS(cfg)` with the torchvision
  preset, `fcos_jax.model.config.torchvision(num_classes=...)`.
- `convert_resnet_state_dict`: ImageNet `torchvision.models.resnet50` (or
  18/34/101/152, or a ResNeXt with cfg.groups / cfg.width_per_group set;
  see also `fcos_jax.convert.imagenet`) -> the backbone subtree, variables["params"]["backbone"];
  put it into a fresh model with `merge_backbone`:

      variables = init_variables(cfg, jax.random.key(0))
      backbone = convert_resnet_state_dict("resnet50-0676ba61.pth", cfg)
      variables = merge_backbone(variables, backbone)

A state dict is a path to a `.pth` (needs PyTorch) or `.npz` file, or any
mapping of names to torch tensors or NumPy arrays. Conversion is strict: a
missing, unexpected or mis-shaped tensor is refused with the full list.
"""

from __future__ import annotations

import functools
import io
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from fcos_jax import errors, storage
from fcos_jax.convert import safe_load
from fcos_jax.model.config import (IMAGENET_RGB_MEAN, IMAGENET_RGB_STD,
                                   CenternessQuality,
                                   ModelConfig)
from fcos_jax.model.fcos import MODEL_STRIDES, init_variables

# Fields that change what the weights compute, and torchvision's values.
_BACKBONE_REQUIRED = dict(
    backbone="resnet", stride_in_1x1=False, bn_eps=1e-5, backbone_norm="frozen_bn",
    input_bgr=False, input_range=1.0,
    pixel_mean=IMAGENET_RGB_MEAN, pixel_std=IMAGENET_RGB_STD)
_FCOS_REQUIRED = dict(
    _BACKBONE_REQUIRED, fpn_channels=256, p6_from="p5", head_norm="gn",
    gn_groups=32, quality=CenternessQuality(), norm_reg_targets=True,
    use_scale=False,
    location_offset="zero", strides=MODEL_STRIDES)
# torchvision's FCOS has no deformable convs. (Its ImageNet ResNets start
# deformable backbones too: `imagenet_backbone_shapes`.)
_FCOS_REQUIRED.update(dcn_stages=(), head_dcn=False)

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean",
       "var": "running_var"}


def load_state_dict(state_dict) -> dict[str, np.ndarray]:
  """A path (.pth / .pt via torch, .npz via NumPy) or a mapping -> NumPy."""
  if isinstance(state_dict, (str, os.PathLike)):
    path = os.fspath(state_dict)
    raw = storage.read_bytes(path)  # Local or a URL.
    if path.endswith(".npz"):
      try:  # No pickles: object arrays are refused.
        with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
          return {k: np.asarray(arrays[k]) for k in arrays.files}
      except ValueError as e:
        if "allow_pickle" in str(e):
          raise safe_load.refused(path, "a pickled object array") from None
        raise errors.DataError(f"{path}: not a readable .npz ({e}).") from None
    require_torch(path)  # After the read: a missing file is named first.
    state_dict = safe_load.torch_load(path, raw)
  if not isinstance(state_dict, Mapping):
    raise TypeError(
        f"state_dict must be a path or a mapping of names to arrays, got "
        f"{type(state_dict).__name__}.")
  return {k: _to_numpy(v) for k, v in state_dict.items()}


def require_torch(path: str) -> None:
  """A MissingExtraError naming `path` and the `convert` extra when torch,
  which reads .pth files, is not installed (an .npz needs no torch)."""
  errors.require_extra(
      "convert", f"Reading {path} (a PyTorch file; an .npz of the same state "
      "dict needs no torch)", "torch")


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # torch.Tensor, without importing torch.
    v = v.detach().cpu().numpy()
  return np.asarray(v)


def _check_cfg(cfg: ModelConfig, required: Mapping[str, Any], what: str):
  bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in required.items()
         if getattr(cfg, k) != v]
  if bad:
    raise errors.ConfigError(
        f"ModelConfig is not compatible with {what}: {'; '.join(bad)}. "
        "Use fcos_jax.model.config.torchvision(num_classes=..., depth=...).")


def _backbone_name(path: tuple[str, ...]) -> str:
  """Our backbone path (under params/backbone) -> torchvision ResNet name."""
  *mods, leaf = path
  if mods[0] == "stem":
    module = {"conv": "conv1", "bn": "bn1"}[mods[1]]
  else:
    layer = f"layer{int(mods[0][3:]) - 1}.{int(mods[1][5:])}"
    sub = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"
           }.get(mods[2], mods[2])
    module = f"{layer}.{sub}"
  return f"{module}.{'weight' if leaf == 'kernel' else _BN[leaf]}"


def _fpn_name(path: tuple[str, ...]) -> str:
  module, leaf = path
  if module in ("p6", "p7"):
    name = f"extra_blocks.{module}"
  else:
    kind = "inner_blocks" if module.startswith("lateral") else "layer_blocks"
    name = f"{kind}.{int(module[-1]) - 3}.0"
  return f"{name}.{'weight' if leaf == 'kernel' else 'bias'}"


def _head_name(path: tuple[str, ...]) -> str:
  module, leaf = path
  m = re.fullmatch(r"(cls|box)_(tower|norm)_(\d+)", module)
  if m:
    branch = "classification_head" if m[1] == "cls" else "regression_head"
    # torchvision's tower is Sequential(conv, GroupNorm, ReLU) x n.
    index = 3 * int(m[3]) + (m[2] == "norm")
    name = f"{branch}.conv.{index}"
  else:
    name = {"cls_logits": "classification_head.cls_logits",
            "box_regression": "regression_head.bbox_reg",
            "centerness": "regression_head.bbox_ctrness"}[module]
  return f"{name}.{'weight' if leaf in ('kernel', 'scale') else 'bias'}"


def _torch_to_ours(array: np.ndarray, leaf: str) -> np.ndarray:
  # Conv kernels: torch OIHW -> Flax HWIO.
  if leaf == "kernel" and array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)
  return np.asarray(array, np.float32)


def _normalise_names(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drop BatchNorm `num_batches_tracked` counters (absent from
  FrozenBatchNorm2d state dicts; they do not affect the output) and rename
  FPN blocks saved by torchvision < 0.13 (`inner_blocks.0.weight`)."""
  out = {}
  for k, v in sd.items():
    if k.endswith("num_batches_tracked"):
      continue
    k = re.sub(r"fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(weight|bias)$",
               r"fpn.\1.\2.0.\3", k)
    out[k] = v
  return out


def _convert(sd: dict[str, np.ndarray], targets: dict, what: str) -> dict:
  """targets: {torch name: (our path, shape)} -> {our path: array}."""
  sd = _normalise_names(sd)
  missing = sorted(set(targets) - set(sd))
  unexpected = sorted(set(sd) - set(targets))
  converted, misshaped = {}, []
  for name, (path, shape) in targets.items():
    if name not in sd:
      continue
    value = _torch_to_ours(sd[name], path[-1])
    if value.shape != tuple(shape):
      misshaped.append(f"{name}: got {tuple(sd[name].shape)}, expected "
                       f"{_torch_shape(shape, path[-1])}")
    converted[path] = value
  if missing or unexpected or misshaped:
    lines = [f"Cannot convert this state dict to {what}:"]
    for title, items in (("missing", missing), ("unexpected", unexpected),
                         ("mis-shaped", misshaped)):
      if items:  # The full list: the fix often needs all of it.
        lines.append(f"  {len(items)} {title}: " + ", ".join(items))
    lines.append("Check that cfg.depth, cfg.width and cfg.num_classes match "
                 "the checkpoint.")
    raise errors.DataError("\n".join(lines))
  return converted


def _torch_shape(shape, leaf):
  shape = tuple(shape)
  return (shape[3], shape[2], shape[0], shape[1]) if (
      leaf == "kernel" and len(shape) == 4) else shape


@functools.lru_cache(maxsize=8)
def _param_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  shapes = jax.eval_shape(lambda r: init_variables(cfg, r), jax.random.key(0))
  flat = traverse_util.flatten_dict(shapes["params"])
  return {p: s.shape for p, s in flat.items()}


def fcos_state_dict_names(cfg: ModelConfig) -> dict:
  """{torchvision state-dict name: (our parameter path, our shape)} of the
  whole detector (shapes in our layout: conv kernels HWIO)."""
  prefix = {"backbone": ("backbone.body.", _backbone_name),
            "fpn": ("backbone.fpn.", _fpn_name),
            "head": ("head.", _head_name)}
  targets = {}
  for path, shape in _param_shapes(cfg).items():
    pre, name = prefix[path[0]]
    targets[pre + name(path[1:])] = (path, shape)
  return targets


def torch_shape(shape, leaf: str) -> tuple[int, ...]:
  """Our shape of a parameter named `leaf` -> torchvision's (OIHW convs)."""
  return _torch_shape(shape, leaf)


def convert_fcos_state_dict(state_dict, cfg: ModelConfig) -> dict:
  """torchvision `fcos_resnet50_fpn` state dict -> {"params": ...}.

  cfg: the torchvision preset, with the checkpoint's num_classes (91 for
  torchvision's COCO weights: it keeps the unused COCO ids) and depth.
  """
  _check_cfg(cfg, _FCOS_REQUIRED, "torchvision's FCOS")
  sd = load_state_dict(state_dict)
  flat = _convert(sd, fcos_state_dict_names(cfg),
                  "fcos_jax FCOS (torchvision preset)")
  return {"params": traverse_util.unflatten_dict(flat)}


def convert_resnet_state_dict(state_dict, cfg: ModelConfig) -> dict:
  """torchvision ImageNet ResNet state dict -> backbone params, the tree of
  variables["params"]["backbone"] (`fc.*` is ignored). See `merge_backbone`.
  """
  _check_cfg(cfg, _BACKBONE_REQUIRED, "a torchvision ResNet")
  sd = {k: v for k, v in load_state_dict(state_dict).items()
        if not k.startswith("fc.")}
  targets = {}
  for path, shape in imagenet_backbone_shapes(cfg).items():
    # A deformable conv2's kernel (conv2/conv/kernel) is the plain conv2's.
    targets[_backbone_name(path[:3] + path[4:] if len(path) == 5 else path)
            ] = (path, shape)
  flat = _convert(sd, targets, f"a ResNet-{cfg.depth} backbone")
  return traverse_util.unflatten_dict(flat)


def imagenet_backbone_shapes(cfg: ModelConfig) -> dict:
  """{path under params/backbone: shape} of what an ImageNet checkpoint
  holds: every backbone parameter but the deformable convs' offset convs
  (dcn_stages), which ImageNet classifiers do not have (`merge_backbone`
  keeps their initial values)."""
  return {p[1:]: s for p, s in _param_shapes(cfg).items()
          if p[0] == "backbone" and "offset" not in p}


def merge_backbone(variables: dict, backbone_params: dict) -> dict:
  """A copy of `variables` with params["backbone"] replaced by
  `backbone_params` (from `convert_resnet_state_dict`); shapes must match.
  The deformable convs' offset convs, which ImageNet checkpoints lack, keep
  their values in `variables` (initialised to zero: each deformable conv
  starts as the plain conv it replaces)."""
  old = traverse_util.flatten_dict(variables["params"]["backbone"])
  new = traverse_util.flatten_dict(backbone_params)
  offsets = {p: v for p, v in old.items() if "offset" in p and p not in new}
  if offsets:
    new.update(offsets)
    backbone_params = traverse_util.unflatten_dict(new)
  if set(old) != set(new):
    diff = sorted("/".join(p) for p in set(old) ^ set(new))
    raise ValueError(f"merge_backbone: parameter trees differ at {diff[:10]}; "
                     "build both from the same cfg.depth.")
  bad = ["/".join(p) for p in old if tuple(old[p].shape) != tuple(new[p].shape)]
  if bad:
    raise ValueError(f"merge_backbone: shapes differ at {bad[:10]}; build "
                     "both from the same cfg.width and cfg.depth.")
  params = dict(variables["params"], backbone=backbone_params)
  return dict(variables, params=params)


# torchvision's COCO detectors keep the 91-slot label scheme of the original
# COCO release: slot k is COCO category id k (slot 0 background, 11 unused).
TORCHVISION_COCO_SLOTS = 91


def coco_categories() -> list[dict]:
  """The 80 COCO 2017 categories [{"id", "name"}] in label order."""
  from fcos_jax.data.tfds_coco import (  # pylint: disable=import-outside-toplevel
      COCO_CATEGORY_IDS, COCO_CATEGORY_NAMES)
  return [{"id": int(i), "name": str(n)}
          for i, n in zip(COCO_CATEGORY_IDS, COCO_CATEGORY_NAMES)]


def select_class_slots(params: dict, slots) -> dict:
  """params with the class-logit conv keeping only the output channels
  `slots` (in that order): label i of the result is slot slots[i]."""
  slots = np.asarray(slots, np.int64)
  head = dict(params["head"])
  cls = dict(head["cls_logits"])
  cls["kernel"] = np.asarray(cls["kernel"])[..., slots]
  cls["bias"] = np.asarray(cls["bias"])[slots]
  head["cls_logits"] = cls
  return dict(params, head=head)


def convert_coco_detector(state_dict, **overrides):
  """torchvision's `fcos_resnet50_fpn` COCO weights (91 class slots) ->
  (cfg, params, categories) of an 80-class detector: label i is the i-th
  COCO category (by id), taken from slot = its category id.

  overrides: ModelConfig fields on top of the torchvision preset (e.g.
  score_thresh, dtype). The location rule is torchvision's
  (`location_stride="canvas"`), so detections equal torchvision's on any
  canvas.
  """
  from fcos_jax.model import config as presets  # pylint: disable=import-outside-toplevel
  categories = coco_categories()
  cfg = presets.torchvision(num_classes=TORCHVISION_COCO_SLOTS)
  params = convert_fcos_state_dict(state_dict, cfg)["params"]
  params = select_class_slots(params, [c["id"] for c in categories])
  cfg = presets.torchvision(num_classes=len(categories), **overrides)
  return cfg, params, categories
