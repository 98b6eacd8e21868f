"""The analytic cost of FCOS, and the peak FLOP/s of common accelerators.

`analytic_forward_flops` counts the convolutions of the network from the
architecture alone (not from our Flax code), as 2 * H_out * W_out * k * k *
C_in * C_out / groups per conv (a multiply-add is 2 FLOPs), per part:
backbone (ResNet, ResNeXt or MobileNetV2), FPN, head. A deformable conv
counts as its conv plus its offset/mask conv (3 * k * k outputs); its
bilinear sampling, norms, activations, pooling and post-processing are left
out (under 1% of the total without deformable convs). It is the
cross-check of XLA's `cost_analysis()`.

Spatial sizes: every stride-2 conv and the stem's max pool give ceil(n / 2),
as PyTorch's symmetric padding does.
"""

from __future__ import annotations

import math

from fcos_jax.model.config import ModelConfig

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
                101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# Dense (no sparsity) peak FLOP/s by `device_kind` substring, from the vendors'
# data sheets: (bfloat16 / fp16 tensor cores, float32 without TF32).
PEAK_FLOPS = {
    "H200": (989e12, 67e12),
    "H100 80GB HBM3": (989e12, 67e12),   # SXM
    "H100 PCIe": (756e12, 51e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L4": (121e12, 30e12),
    "A10G": (70e12, 31e12),              # AWS A10G (NVIDIA spec sheet: 70)
    "V100": (125e12, 15.7e12),           # fp16 tensor cores; no bf16.
    "T4": (65e12, 8.1e12),               # fp16 tensor cores; no bf16.
}


def peak_flops(device_kind: str, dtype: str = "bfloat16"):
  """Peak dense FLOP/s of a device for `dtype`, or None when unknown."""
  for name, (half, single) in PEAK_FLOPS.items():
    if name.lower() in device_kind.lower():
      return half if dtype == "bfloat16" else single
  return None


def _down(n: int) -> int:
  return math.ceil(n / 2)


def _conv(h, w, k, cin, cout, groups=1) -> int:
  """FLOPs of one conv whose output is h x w."""
  return 2 * h * w * k * k * cin * cout // groups


def _offset_conv(h, w, cin) -> int:
  """The offset/mask conv of a 3x3 DCNv2: 3 * 9 outputs (2 offsets and a
  mask per tap)."""
  return _conv(h, w, 3, cin, 27)


class _Convs:
  """The network's convolutions, each with what its backward must compute.

  The backward of a conv costs its forward once for the kernel gradient
  (only if the conv is trained) and once more for the input gradient (only
  if something trained lies below it). `grad` flags say whether a tensor
  depends on trained parameters, so frozen stages cost forward only.
  """

  def __init__(self):
    self.forward = {"backbone": 0, "fpn": 0, "head": 0}
    self.backward = {"backbone": 0, "fpn": 0, "head": 0}

  def add(self, part, flops, trained: bool, input_grad: bool) -> bool:
    """Records one conv; returns whether its output carries a gradient."""
    self.forward[part] += flops
    self.backward[part] += flops * (int(trained) + int(input_grad))
    return trained or input_grad


def _backbone(cfg: ModelConfig, hw, convs: _Convs):
  """Adds the backbone's convs; returns [(H, W, C, grad)] of C3, C4, C5."""
  if cfg.backbone == "mobilenet_v2":
    return _mobilenet_v2(cfg, hw, convs)
  # Stage k (0 = stem, 1 = res2, ...) is frozen when k + 1 <= freeze_at.
  trained = lambda k: k + 1 > cfg.freeze_at
  h, w = _down(hw[0]), _down(hw[1])
  grad = convs.add("backbone", _conv(h, w, 7, 3, cfg.width), trained(0),
                   False)                # Stem conv on the image, stride 2.
  h, w = _down(h), _down(w)             # Max pool.
  cin = cfg.width
  bottleneck = cfg.depth >= 50
  outs = []
  for k, blocks in enumerate(STAGE_BLOCKS[cfg.depth]):
    planes = cfg.width * 2 ** k
    cout = planes * 4 if bottleneck else planes
    # ResNeXt: torchvision's int(planes * width_per_group / 64) * groups.
    inner = int(planes * cfg.width_per_group / 64) * cfg.groups
    dcn = k + 2 in cfg.dcn_stages
    t = trained(k + 1)
    for i in range(blocks):
      stride = 2 if (i == 0 and k > 0) else 1
      ho, wo = (_down(h), _down(w)) if stride == 2 else (h, w)
      if bottleneck:
        # 1x1 runs at the output size when it carries the stride (caffe),
        # else at the input size (torchvision: stride in the 3x3).
        h1, w1 = (ho, wo) if cfg.stride_in_1x1 else (h, w)
        g = convs.add("backbone", _conv(h1, w1, 1, cin, inner), t, grad)
        if dcn:
          convs.add("backbone", _offset_conv(ho, wo, inner), t, g)
        g = convs.add("backbone", _conv(ho, wo, 3, inner, inner, cfg.groups),
                      t, g)
        g = convs.add("backbone", _conv(ho, wo, 1, inner, cout), t, g)
      else:
        g = convs.add("backbone", _conv(ho, wo, 3, cin, planes), t, grad)
        g = convs.add("backbone", _conv(ho, wo, 3, planes, planes), t, g)
      if stride != 1 or cin != cout:    # Downsample shortcut.
        convs.add("backbone", _conv(ho, wo, 1, cin, cout), t, grad)
      grad = g or grad
      cin, h, w = cout, ho, wo
    if k >= 1:
      outs.append((h, w, cout, grad))
  return outs


# MobileNetV2 (the official FCOS body): (expansion, channels, blocks,
# first stride) per group, after a 3x3/2 stem of 32 channels; C3-C5 are the
# outputs of blocks 6, 13 and 17.
MNV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
MNV2_TAPS = (6, 13, 17)


def _mobilenet_v2(cfg: ModelConfig, hw, convs: _Convs):
  # features[i] is frozen when i + 1 <= freeze_at (stem = features[0]).
  trained = lambda i: i + 1 > cfg.freeze_at
  h, w = _down(hw[0]), _down(hw[1])
  grad = convs.add("backbone", _conv(h, w, 3, 3, 32), trained(0), False)
  cin, i, outs = 32, 0, []
  for t, c, n, s in MNV2_SETTING:
    for j in range(n):
      i += 1
      stride = s if j == 0 else 1
      ho, wo = (_down(h), _down(w)) if stride == 2 else (h, w)
      hidden = cin * t
      tr, g = trained(i), grad
      if t != 1:
        g = convs.add("backbone", _conv(h, w, 1, cin, hidden), tr, g)
      g = convs.add("backbone", _conv(ho, wo, 3, hidden, hidden, hidden), tr, g)
      g = convs.add("backbone", _conv(ho, wo, 1, hidden, c), tr, g)
      grad = g or grad
      cin, h, w = c, ho, wo
      if i in MNV2_TAPS:
        outs.append((h, w, c, grad))
  return outs


def _fpn(cfg: ModelConfig, c_levels, convs: _Convs):
  """Adds the FPN's convs; returns the (H, W) of P3..P7."""
  f = cfg.fpn_channels
  sizes = []
  for h, w, c, grad in c_levels:
    convs.add("fpn", _conv(h, w, 1, c, f), True, grad)   # Lateral.
    convs.add("fpn", _conv(h, w, 3, f, f), True, True)   # Output.
    sizes.append((h, w))
  h5, w5, c5, grad5 = c_levels[-1]
  h6, w6 = _down(h5), _down(w5)
  from_p5 = cfg.p6_from == "p5"
  convs.add("fpn", _conv(h6, w6, 3, f if from_p5 else c5, f), True,
            True if from_p5 else grad5)
  h7, w7 = _down(h6), _down(w6)
  convs.add("fpn", _conv(h7, w7, 3, f, f), True, True)
  return sizes + [(h6, w6), (h7, w7)]


def _head(cfg: ModelConfig, level_sizes, convs: _Convs):
  """Adds the shared head's convs over all levels."""
  f = cfg.fpn_channels
  per_location = (2 * cfg.head_convs * _conv(1, 1, 3, f, f) +
                  _conv(1, 1, 3, f, cfg.num_classes + 4 + 1))
  if cfg.head_dcn:  # The last conv of each tower is deformable.
    per_location += 2 * _offset_conv(1, 1, f)
  convs.add("head", per_location * sum(h * w for h, w in level_sizes),
            True, True)


def _count(cfg: ModelConfig, hw):
  convs = _Convs()
  sizes = _fpn(cfg, _backbone(cfg, hw, convs), convs)
  _head(cfg, sizes, convs)
  return convs, sizes


def analytic_forward_flops(cfg: ModelConfig, hw) -> dict:
  """Forward FLOPs of one image of size hw = (H, W), by part."""
  convs, sizes = _count(cfg, hw)
  return {**convs.forward, "total": sum(convs.forward.values()),
          "level_sizes": sizes}


def analytic_train_flops(cfg: ModelConfig, hw) -> dict:
  """FLOPs of one training image (forward + backward), by part: the model
  FLOPs of MFU. Frozen stages (`freeze_at`) cost their forward only, and
  the convs right above them need no input gradient."""
  convs, _ = _count(cfg, hw)
  parts = {k: convs.forward[k] + convs.backward[k] for k in convs.forward}
  return {**parts, "total": sum(parts.values())}
