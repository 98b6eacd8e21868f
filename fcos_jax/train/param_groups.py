"""Optimizer groups: one label per parameter, for `optax.multi_transform`.

  "frozen": frozen BatchNorm statistics and affine, and every parameter of a
            frozen backbone stage (stage k <= cfg.freeze_at; stem = 1,
            res2 = 2, ...; MobileNetV2 block{i} = i + 1). No update and no
            optimizer state.
  "bias":   conv biases (deformable convs' offset convs in the backbone too)
            and GroupNorm / trainable BatchNorm biases (official: LR x2, no
            decay).
  "norm":   GroupNorm / trainable BatchNorm scales. (A trainable BatchNorm's
            running mean and var are "frozen": the train step moves them.)
  "weight": conv kernels and the per-level Scale.
"""

from __future__ import annotations

from flax import traverse_util

from fcos_jax.model.config import ModelConfig

LABELS = ("frozen", "bias", "norm", "weight")


def _stage_index(name: str) -> int:
  """The `freeze_at` index of a backbone child: stem 1, ResNet res{k} k,
  MobileNetV2 block{i} i + 1 (its i-th `features` entry, stem = 0)."""
  if name == "stem":
    return 1
  if name.startswith("block"):
    return int(name[len("block"):]) + 1
  return int(name[len("res"):])


def _label(path: tuple[str, ...], cfg: ModelConfig) -> str:
  top, leaf = path[0], path[-1]
  if top == "backbone":
    # Convs in the backbone have only a kernel; everything else is a norm
    # vector: frozen BatchNorm, or trainable GroupNorm (backbone_norm="gn").
    if _stage_index(path[1]) <= cfg.freeze_at:
      return "frozen"
    if leaf == "kernel":
      return "weight"
    if path[-2] == "offset":  # A deformable conv's offset/mask conv bias.
      return "bias"
    if cfg.backbone_norm == "gn" or (cfg.backbone_norm == "bn"
                                     and leaf in ("scale", "bias")):
      return "norm" if leaf == "scale" else "bias"
    return "frozen"  # Frozen BN; a trainable BN's running statistics.
  if top in ("fpn", "head"):
    if leaf == "kernel" or leaf.startswith("scale_"):
      return "weight"
    if leaf == "bias":
      return "bias"
    if leaf == "scale" and ("_norm_" in path[-2]
                            or path[-2].endswith("_norm")):  # VFNet's.
      return "norm"
  raise ValueError(
      f"param_labels: no optimizer group for parameter {'/'.join(path)}; "
      "pass variables['params'] of an FCOS model.")


def param_labels(params, cfg: ModelConfig):
  """Same structure as `params` (variables["params"] of `FCOS(cfg)`), each
  leaf one of LABELS."""
  if "params" in params and len(params) == 1:
    raise ValueError("param_labels: pass variables['params'], not variables.")
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({p: _label(p, cfg) for p in flat})
