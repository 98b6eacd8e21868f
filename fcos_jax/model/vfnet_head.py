"""VarifocalNet's head (Zhang et al., CVPR 2021), as mmdetection's
VFNetHead.forward_single states it, shared by every FPN level.

The class and box towers are FCOSHead's (`cfg.head_convs` x conv + GN +
ReLU; VFNet: 3). Then, on a level of stride s:

  initial   = exp(scale_l * vfnet_reg(relu(GN(vfnet_reg_conv(box_feat)))))
              * d_l,   d_l = 8 s ("reg_denom": mmdetection's 64 .. 1024 for
              P3-P7) or s ("stride"), pixels;
  offset    = star_offsets(initial, s, gradient_mul): the 3 x 3 taps of a
              deformable conv moved onto the initial box's left / centre /
              right x top / centre / bottom, in feature cells;
  refined   = exp(scale_refine_l * vfnet_reg_refine(relu(
              vfnet_reg_refine_dconv(box_feat, offset)))) * stop_grad(initial);
  cls       = vfnet_cls(relu(vfnet_cls_dconv(cls_feat, offset))).

The deformable convs are DCNv1 (no modulation, no bias, mmcv's
DeformConv2d) with the offset given (`deform_conv.DeformConv`). The offset
sees the initial box through (1 - g) stop_grad(box) + g box, g =
`cfg.quality.gradient_mul` (0.1): the refinement and the class score send
a tenth of their gradient back to the initial box.

Parameter tree (beside FCOSHead's cls_tower_{i}, box_tower_{i}, cls_norm_{i},
box_norm_{i}), named after mmdetection's modules: vfnet_reg_conv (kernel,
bias), vfnet_reg_norm (GN scale, bias), vfnet_reg (kernel, bias),
vfnet_reg_refine_dconv (kernel), vfnet_reg_refine (kernel, bias),
vfnet_cls_dconv (kernel), vfnet_cls (kernel, bias), scale_{l} and
scale_refine_{l} (scalars). mmdetection's GN ConvModules (the towers,
vfnet_reg_conv) have no bias: ours start at 0, a converter writes 0.

Init as mmdetection: convs N(0, 0.01), bias 0; vfnet_cls bias
-log((1 - p) / p); the deformable kernels uniform(+-1/sqrt(fan_in)); Scales 1.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.model.deform_conv import DeformConv
from fcos_jax.model.head import FCOSHead
from fcos_jax.model.resnet import compute_dtype

# The initial box's unit with bbox_norm "reg_denom", in strides:
# mmdetection's reg_denoms (the regress ranges' ends 64, 128, 256, 512 and
# twice the last, 1024) are 8 strides on P3-P7.
REG_DENOM_STRIDES = 8.0

# Which side of the box (l, t, r, b = 0..3) moves each tap's (dy, dx), with
# its sign; None stays at the tap's centre row / column. Tap k = 3 ky + kx.
_STAR_ROWS = ((1, -1.0), None, (3, 1.0))  # ky = 0: top, 1: centre, 2: bottom.
_STAR_COLS = ((0, -1.0), None, (2, 1.0))  # kx = 0: left, 1: centre, 2: right.


def star_offsets(box, stride: float, gradient_mul: float = 0.1):
  """VFNet's star-shaped deformable conv offsets (mmdetection
  VFNetHead.star_dcn_offset).

  box: [..., 4] (l, t, r, b) distances in pixels (the initial box).
  Returns [..., 18]: (dy, dx) of each of the 9 taps of a 3 x 3 kernel
  (tap k = 3 ky + kx, the layout of `modulated_deform_conv`), in feature
  cells, so that tap (ky, kx) samples the box's (top, centre, bottom)[ky] x
  (left, centre, right)[kx] point: dy = -t/s, 0, b/s minus the tap's own
  row offset ky - 1, likewise dx. The gradient to `box` is scaled by
  `gradient_mul`.
  """
  box = jnp.asarray(box, jnp.float32)
  box = ((1.0 - gradient_mul) * jax.lax.stop_gradient(box)
         + gradient_mul * box) / stride
  zero = jnp.zeros(box.shape[:-1], box.dtype)

  def side(rule, base):
    if rule is None:
      return zero - base
    k, sign = rule
    return sign * box[..., k] - base

  out = []
  for ky in range(3):
    for kx in range(3):
      out += [side(_STAR_ROWS[ky], ky - 1.0), side(_STAR_COLS[kx], kx - 1.0)]
  return jnp.stack(out, axis=-1)


class VFNetHead(FCOSHead):
  """One level's features [B, H, W, F] -> (cls [B, H, W, C] logits,
  refined [B, H, W, 4], initial [B, H, W, 4]) float32, distances (l, t, r,
  b) in pixels. Call it once per level with `level` set."""

  def setup(self):
    cfg, conv = self.cfg, self._conv
    dtype = compute_dtype(cfg)
    self._setup_towers()
    f = cfg.fpn_channels
    self.vfnet_reg_conv = conv(f)
    if cfg.head_norm == "gn":
      self.vfnet_reg_norm = self._norm()
    self.vfnet_reg = conv(4)
    self.vfnet_reg_refine_dconv = DeformConv(f, dtype=dtype)
    self.vfnet_reg_refine = conv(4)
    self.vfnet_cls_dconv = DeformConv(f, dtype=dtype)
    prior = -math.log((1 - cfg.prior_prob) / cfg.prior_prob)
    self.vfnet_cls = conv(cfg.num_classes, nn.initializers.constant(prior))
    if cfg.use_scale:
      self.scales = [self.param(f"scale_{l}", nn.initializers.ones, ())
                     for l in range(cfg.num_levels)]
      self.scales_refine = [
          self.param(f"scale_refine_{l}", nn.initializers.ones, ())
          for l in range(cfg.num_levels)]

  def __call__(self, x, level: int):
    cfg = self.cfg
    gn = cfg.head_norm == "gn"
    stride = float(cfg.strides[level])
    cls_feat = self._tower(x, self.cls_tower, self.cls_norm if gn else None)
    box_feat = self._tower(x, self.box_tower, self.box_norm if gn else None)

    init_feat = self.vfnet_reg_conv(box_feat)
    if gn:
      init_feat = self.vfnet_reg_norm(init_feat)
    init = self.vfnet_reg(nn.relu(init_feat)).astype(jnp.float32)
    if cfg.use_scale:
      init = init * self.scales[level]
    unit = stride * (REG_DENOM_STRIDES if cfg.quality.bbox_norm == "reg_denom"
                     else 1.0)
    init = jnp.exp(init) * np.float32(unit)

    offset = star_offsets(init, stride, cfg.quality.gradient_mul)
    refine_feat = nn.relu(self.vfnet_reg_refine_dconv(box_feat, offset))
    refine = self.vfnet_reg_refine(refine_feat).astype(jnp.float32)
    if cfg.use_scale:
      refine = refine * self.scales_refine[level]
    refine = jnp.exp(refine) * jax.lax.stop_gradient(init)

    cls_feat = nn.relu(self.vfnet_cls_dconv(cls_feat, offset))
    cls = self.vfnet_cls(cls_feat).astype(jnp.float32)
    return cls, refine, init
