"""Feature pyramid: C3-C5 -> P3-P7 (strides 8 to 128), `cfg.fpn_channels`.

1x1 laterals, nearest top-down upsampling, 3x3 output convs (no norm, no
ReLU). P6 = conv3x3/2 on P5 (`p6_from="p5"`) or on C5 ("c5"); P7 = conv3x3/2
on ReLU(P6), or on P6 itself with `p7_relu=False` (mmdetection's FPN). Init: kaiming_uniform(a=1), bias 0, as both the official FCOS
(maskrcnn-benchmark `conv_with_kaiming_uniform`) and torchvision use.

Parameter tree: lateral3..5, output3..5, p6, p7 (each kernel, bias); with
P2 (`config.with_p2`, C2 from the ResNet) also lateral2, output2.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from fcos_jax.model.config import ModelConfig
from fcos_jax.model.resnet import compute_dtype

# kaiming_uniform(a=1): gain 1, bound sqrt(3 / fan_in).
_fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def upsample_to(x, hw: tuple[int, int]):
  """Nearest x2 upsampling of [B, h, w, C], cropped to hw = (H, W).

  The lateral below has H in {2h - 1, 2h}; for both, PyTorch's
  `interpolate(size=hw, mode="nearest")` reads source row floor(i*h/H),
  which equals i // 2, i.e. x2 repetition then a crop.
  """
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return x[:, :hw[0], :hw[1]]


class FPN(nn.Module):
  """(C3, C4, C5) -> [P3, P4, P5, P6, P7], each [B, H_l, W_l, fpn_channels];
  (C2, C3, C4, C5) -> [P2, ..., P7] (`config.with_p2`)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, feats):
    cfg, dtype = self.cfg, compute_dtype(self.cfg)

    def conv(k, stride, name):
      return nn.Conv(cfg.fpn_channels, (k, k), strides=(stride, stride),
                     padding=((k // 2, k // 2),) * 2, kernel_init=_fpn_init,
                     bias_init=nn.initializers.zeros, dtype=dtype,
                     param_dtype=jnp.float32, name=name)

    c5 = feats[-1]
    # (C3, C4, C5), or (C2, .., C5) for P2 (strides from 4): lateral2 and
    # output2 exist only then.
    first = 6 - len(feats)
    laterals = [conv(1, 1, f"lateral{k}")(c)
                for k, c in zip(range(first, 6), feats)]
    top = laterals[-1]
    outs = [conv(3, 1, "output5")(top)]
    for k in range(4, first - 1, -1):
      lat = laterals[k - first]
      top = lat + upsample_to(top, lat.shape[1:3])
      outs.insert(0, conv(3, 1, f"output{k}")(top))
    p6 = conv(3, 2, "p6")(outs[-1] if cfg.p6_from == "p5" else c5)
    p7 = conv(3, 2, "p7")(nn.relu(p6) if cfg.p7_relu else p6)
    return outs + [p6, p7]
