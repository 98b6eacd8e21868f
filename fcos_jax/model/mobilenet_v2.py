"""MobileNetV2 backbone (NHWC) of the official FCOS MNV2 models -> C3-C5.

The body is MobileNetV2 (Sandler et al., 2018) at width 1.0 without its
last 1x1 conv (320 -> 1280) and classifier: a 3x3/2 stem conv (32 channels)
and 17 inverted residual blocks. The official FCOS MNV2 models feed the FPN
from blocks 6, 13 and 17 (32, 96 and 320 channels at strides 8, 16, 32);
block 3 (24 channels, stride 4) is C2, unused by FCOS. torchvision's
`mobilenet_v2` has the same 18 `features` (plus the 1280 conv), so its
ImageNet weights fill this body.

BatchNorm: `cfg.backbone_norm`. The official configs train it with batch
statistics (SyncBN over 32 images, or per-GPU BN): "bn", `resnet.BatchNorm`
(eps `cfg.bn_eps` = 1e-5 as BatchNorm2d), which the MNV2 presets use.
"frozen_bn" keeps the checkpoint's statistics and affine; "gn" is GroupNorm.

Parameter tree (the converters and `param_groups` rely on these names):
  stem/{conv, bn}                         features.0
  block{i}/[expand_conv, expand_bn,]      features.i, i = 1..17
           dw_conv, dw_bn, project_conv, project_bn
`freeze_at` = k freezes the first k features (stem = 1, block{i} = i + 1),
as the official FREEZE_CONV_BODY_AT does for this body.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcos_jax.model.config import ModelConfig
from fcos_jax.model.resnet import backbone_norm, compute_dtype, stop_gradient

# (expansion t, output channels c, blocks n, first stride s) per group.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                             (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                             (6, 320, 1, 1))
STEM_CHANNELS = 32
# `features` indices whose outputs are C3, C4, C5 (official FCOS taps).
TAPS = (6, 13, 17)

# He init (fan_out), as torchvision initialises an untrained MobileNetV2.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def block_specs() -> list[tuple[int, int, int, int]]:
  """(in channels, out channels, stride, expansion) of blocks 1..17."""
  specs, cin = [], STEM_CHANNELS
  for t, c, n, s in INVERTED_RESIDUAL_SETTING:
    for i in range(n):
      specs.append((cin, c, s if i == 0 else 1, t))
      cin = c
  return specs


def tap_channels() -> tuple[int, int, int]:
  """Channels of C3, C4, C5."""
  specs = block_specs()
  return tuple(specs[i - 1][1] for i in TAPS)


def _conv(features, k, stride, name, dtype, groups=1):
  return nn.Conv(features, (k, k), strides=(stride, stride),
                 padding=((k // 2, k // 2),) * 2, use_bias=False,
                 feature_group_count=groups, kernel_init=_conv_init,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


class InvertedResidual(nn.Module):
  """[1x1 expand, BN, ReLU6] -> 3x3 depthwise, BN, ReLU6 -> 1x1 project, BN
  (linear), + input when the stride is 1 and the width is unchanged."""

  cin: int
  cout: int
  stride: int
  expansion: int
  cfg: ModelConfig
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    cfg, dtype = self.cfg, compute_dtype(self.cfg)
    bn = lambda name: backbone_norm(cfg, dtype, name, self.stop_gradients)
    hidden = int(round(self.cin * self.expansion))
    y = x
    if self.expansion != 1:
      y = nn.relu6(bn("expand_bn")(_conv(hidden, 1, 1, "expand_conv", dtype)(y)))
    y = _conv(hidden, 3, self.stride, "dw_conv", dtype, groups=hidden)(y)
    y = nn.relu6(bn("dw_bn")(y))
    y = bn("project_bn")(_conv(self.cout, 1, 1, "project_conv", dtype)(y))
    if self.stride == 1 and self.cin == self.cout:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """images [B, H, W, 3] -> (C3, C4, C5) with strides 8, 16, 32."""

  cfg: ModelConfig
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    cfg, dtype, sg = self.cfg, compute_dtype(self.cfg), self.stop_gradients
    freeze = lambda k, y: stop_gradient(y, sg) if k <= cfg.freeze_at else y
    x = freeze(1, _Stem(cfg, sg, name="stem")(x.astype(dtype)))
    outs = []
    for i, (cin, cout, stride, t) in enumerate(block_specs(), start=1):
      x = InvertedResidual(cin, cout, stride, t, cfg, sg, name=f"block{i}")(x)
      x = freeze(i + 1, x)
      if i in TAPS:
        outs.append(x)
    return tuple(outs)


class _Stem(nn.Module):
  """3x3/2 conv to 32 channels, BN, ReLU6 (features.0)."""

  cfg: ModelConfig
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    dtype = compute_dtype(self.cfg)
    x = _conv(STEM_CHANNELS, 3, 2, "conv", dtype)(x)
    return nn.relu6(backbone_norm(self.cfg, dtype, "bn",
                                  self.stop_gradients)(x))
