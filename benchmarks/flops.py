"""The analytic cost of FCOS, and the peak FLOP/s of common accelerators.

`analytic_forward_flops` counts the convolutions of the network from the
architecture alone (not from our Flax code), as 2 * H_out * W_out * k * k *
C_in * C_out per conv (a multiply-add is 2 FLOPs), per part: backbone, FPN,
head. Norms, activations, pooling and post-processing are left out (under
1% of the total). It is the cross-check of XLA's `cost_analysis()`.

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


def _conv(h, w, k, cin, cout) -> int:
  """FLOPs of one conv whose output is h x w."""
  return 2 * h * w * k * k * cin * cout


def backbone_flops(cfg: ModelConfig, hw):
  """FLOPs of the ResNet and the (H, W, C) of C3, C4, C5."""
  h, w = _down(hw[0]), _down(hw[1])
  total = _conv(h, w, 7, 3, cfg.width)  # Stem conv, stride 2.
  h, w = _down(h), _down(w)             # Max pool.
  cin = cfg.width
  bottleneck = cfg.depth >= 50
  outs = []
  for k, blocks in enumerate(STAGE_BLOCKS[cfg.depth]):
    planes = cfg.width * 2 ** k
    cout = planes * 4 if bottleneck else planes
    for i in range(blocks):
      stride = 2 if (i == 0 and k > 0) else 1
      ho, wo = (_down(h), _down(w)) if stride == 2 else (h, w)
      if bottleneck:
        # 1x1 runs at the output size when it carries the stride (caffe),
        # else at the input size (torchvision: stride in the 3x3).
        h1, w1 = (ho, wo) if cfg.stride_in_1x1 else (h, w)
        total += _conv(h1, w1, 1, cin, planes)
        total += _conv(ho, wo, 3, planes, planes)
        total += _conv(ho, wo, 1, planes, cout)
      else:
        total += _conv(ho, wo, 3, cin, planes)
        total += _conv(ho, wo, 3, planes, planes)
      if stride != 1 or cin != cout:
        total += _conv(ho, wo, 1, cin, cout)  # Downsample shortcut.
      cin, h, w = cout, ho, wo
    if k >= 1:
      outs.append((h, w, cout))
  return total, outs


def fpn_flops(cfg: ModelConfig, c_levels):
  """FLOPs of the FPN and the (H, W) of P3..P7."""
  f = cfg.fpn_channels
  total = 0
  sizes = []
  for h, w, c in c_levels:
    total += _conv(h, w, 1, c, f) + _conv(h, w, 3, f, f)
    sizes.append((h, w))
  h5, w5, c5 = c_levels[-1]
  h6, w6 = _down(h5), _down(w5)
  total += _conv(h6, w6, 3, f if cfg.p6_from == "p5" else c5, f)
  h7, w7 = _down(h6), _down(w6)
  total += _conv(h7, w7, 3, f, f)
  return total, sizes + [(h6, w6), (h7, w7)]


def head_flops(cfg: ModelConfig, level_sizes):
  """FLOPs of the shared head over all levels."""
  f = cfg.fpn_channels
  per_location = (2 * cfg.head_convs * _conv(1, 1, 3, f, f) +
                  _conv(1, 1, 3, f, cfg.num_classes + 4 + 1))
  return per_location * sum(h * w for h, w in level_sizes)


def analytic_forward_flops(cfg: ModelConfig, hw) -> dict:
  """Forward FLOPs of one image of size hw = (H, W), by part."""
  backbone, c_levels = backbone_flops(cfg, hw)
  fpn, sizes = fpn_flops(cfg, c_levels)
  head = head_flops(cfg, sizes)
  return {"backbone": backbone, "fpn": fpn, "head": head,
          "total": backbone + fpn + head, "level_sizes": sizes}
