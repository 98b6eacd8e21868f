"""The backbone selector: `cfg.backbone` -> the module giving C3, C4, C5."""

from __future__ import annotations

import flax.linen as nn

from fcos_jax.model import mobilenet_v2, resnet
from fcos_jax.model.config import ModelConfig


def build_backbone(cfg: ModelConfig, stop_gradients: bool = True
                   ) -> nn.Module:
  """ResNet / ResNeXt (backbone="resnet") or MobileNetV2; each maps
  images [B, H, W, 3] to (C3, C4, C5) at strides 8, 16, 32.
  stop_gradients=False: the same values without stop_gradient ops."""
  if cfg.backbone == "mobilenet_v2":
    return mobilenet_v2.MobileNetV2(cfg, stop_gradients)
  return resnet.ResNet(cfg, stop_gradients)


def c3_c5_channels(cfg: ModelConfig) -> tuple[int, int, int]:
  """Channels of C3, C4, C5, the FPN's inputs."""
  if cfg.backbone == "mobilenet_v2":
    return mobilenet_v2.tap_channels()
  return resnet.stage_channels(cfg)[1:]
