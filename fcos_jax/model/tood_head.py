"""TOOD's task-aligned head (T-head; Feng et al., ICCV 2021), as
mmdetection's TOODHead.forward states it (anchor_type 'anchor_free'),
shared by every FPN level.

On a level of stride s, with n = `cfg.head_convs` (TOOD: 6) and F =
`cfg.fpn_channels`:

  inter_i   = relu(GN(conv3x3(inter_{i-1}))), i = 1..n, inter_0 = x;
  feat      = concat(inter_1 .. inter_n)              [B, H, W, n F];
  w_task    = sigmoid(la_2(relu(la_1(avgpool(feat)))))   [B, n], per task;
  task_feat = relu(GN(reduction_conv(feat * w_task per block)))  (1x1);
  score     = sqrt(sigmoid(tood_cls(cls_feat)) * sigmoid(cls_prob(feat)));
  box       = (c - d, c + d), d = scale_l * exp(tood_reg(reg_feat)), c the
              location / s: a box in strides; with box `anchor_deltas`
              (anchor_type 'anchor_based') the DeltaXYWH decode of
              scale_l * tood_reg(reg_feat) from the 8 s anchor, / s;
  box'      = box bilinearly resampled at (i, j) + reg_offset(feat)[side],
              one (dy, dx) per side (mmdetection's deform_sampling: a 1x1
              deformable conv with unit weights, 4 groups, zero outside).

The outputs keep the family's layout: `cls_logits` is the logit of the
score (sigmoid(cls_logits) = score, computed from the two log-sigmoids
without rounding to 1), so post-processing, the QFL and the focal loss take
it unchanged; `box_regression` is box' as (l, t, r, b) distances from the
location, in pixels. A resampled box need not contain its location: the
distances can be negative.

With `cfg.quality.num_dcn` (mmdetection's dconv models: 2) the first
inter convs are DCNv2 with `dcn_groups` (4) deformable groups, their
offsets and masks from a conv of their input (initialised to 0).

Parameter tree, named after mmdetection's modules: inter_convs_{i}
(kernel; no bias with GN, as mmdetection's ConvModule; a DCNv2's
conv/kernel and offset/kernel, offset/bias), inter_norm_{i}
(GN), cls_decomp and reg_decomp (layer_attention_0, layer_attention_2:
1x1 kernel + bias; reduction_conv: kernel [1, 1, n F, F], no bias;
reduction_norm: GN), tood_cls, tood_reg (3x3, kernel + bias),
cls_prob_module_0 (1x1), cls_prob_module_2 (3x3), reg_offset_module_0
(1x1), reg_offset_module_2 (3x3), scale_{l}.

Init as mmdetection: inter convs, reduction convs, tood_cls / tood_reg and
cls_prob_module N(0, 0.01), reg_offset_module and the layer attention
N(0, 0.001), biases 0, tood_cls's and cls_prob_module_2's bias
-log((1 - p) / p) (so the score starts at p); Scales 1.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.model.deform_conv import (ModulatedDeformConv,
                                       modulated_deform_conv)
from fcos_jax.model.head import FCOSHead, GN_EPS, anchor_deltas_to_distances
from fcos_jax.model.resnet import compute_dtype

_LN2 = math.log(2.0)


def score_logit(cls_logits, prob_logits):
  """The logit of TOOD's score sqrt(sigmoid(a) * sigmoid(b)), float32.

  log p = (log_sigmoid(a) + log_sigmoid(b)) / 2, logit = log p -
  log(1 - p) with log(1 - p) = log(-expm1(log p)) near p = 1 (no rounding
  of p to 1) and log1p(-exp(log p)) elsewhere; each branch fed a safe
  operand, so no inf reaches a gradient."""
  a = jnp.asarray(cls_logits, jnp.float32)
  b = jnp.asarray(prob_logits, jnp.float32)
  log_p = 0.5 * (jax.nn.log_sigmoid(a) + jax.nn.log_sigmoid(b))
  log_p = jnp.minimum(log_p, -1e-30)  # p < 1: a finite logit.
  near_one = log_p > -_LN2
  hi = jnp.log(-jnp.expm1(jnp.where(near_one, log_p, -1.0)))
  lo = jnp.log1p(-jnp.exp(jnp.where(near_one, -1.0, log_p)))
  return log_p - jnp.where(near_one, hi, lo)


def deform_sampling(feat, offset):
  """mmdetection's TOODHead.deform_sampling: feat [B, H, W, C] sampled
  bilinearly (zero outside the map) at (i + dy_c, j + dx_c) for channel c,
  offset [B, H, W, 2 C] = (dy_0, dx_0, dy_1, dx_1, ...) in cells."""
  c = feat.shape[-1]
  ones = jnp.ones((1, 1, 1, c), jnp.float32)
  return modulated_deform_conv(
      feat.astype(jnp.float32), offset.astype(jnp.float32), None, ones,
      padding=0, feature_group_count=c, deformable_groups=c,
      precision=jax.lax.Precision.HIGHEST)


class TaskDecomposition(nn.Module):
  """TOOD's task decomposition: layer attention over the n stacked
  features, folded into one 1x1 reduction conv, then GN and ReLU."""

  features: int
  stacked: int
  hidden: int
  gn_groups: int
  gn: bool
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, feat, avg_feat):
    def conv1x1(features, std, use_bias, name):
      return nn.Conv(features, (1, 1), use_bias=use_bias,
                     kernel_init=nn.initializers.normal(std),
                     bias_init=nn.initializers.zeros, dtype=self.dtype,
                     param_dtype=jnp.float32, name=name)

    w = nn.relu(conv1x1(self.hidden, 0.001, True, "layer_attention_0")(
        avg_feat))
    w = jax.nn.sigmoid(conv1x1(self.stacked, 0.001, True, "layer_attention_2")(
        w).astype(jnp.float32))                                 # [B, 1, 1, n]
    b, h, wd, _ = feat.shape
    scaled = (feat.reshape(b, h, wd, self.stacked, self.features)
              * w[..., None].astype(feat.dtype)).reshape(b, h, wd, -1)
    y = conv1x1(self.features, 0.01, False, "reduction_conv")(scaled)
    if self.gn:
      y = nn.GroupNorm(num_groups=self.gn_groups, epsilon=GN_EPS,
                       use_fast_variance=False, dtype=self.dtype,
                       param_dtype=jnp.float32, name="reduction_norm")(y)
    return nn.relu(y)


class TOODHead(FCOSHead):
  """One level's features [B, H, W, F] -> (score logits [B, H, W, C],
  box [B, H, W, 4] (l, t, r, b) in pixels), float32. Call it once per
  level with `level` set."""

  def setup(self):
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    n, f = cfg.head_convs, cfg.fpn_channels
    gn = cfg.head_norm == "gn"
    normal = nn.initializers.normal

    def conv(features, k, std, bias_init=nn.initializers.zeros,
             use_bias=True):
      pad = ((k // 2, k // 2),) * 2
      return nn.Conv(features, (k, k), padding=pad, use_bias=use_bias,
                     kernel_init=normal(std), bias_init=bias_init,
                     dtype=dtype, param_dtype=jnp.float32)

    def inter_conv(i):
      if i < cfg.quality.num_dcn:  # mmdetection's DCNv2 ConvModule.
        return ModulatedDeformConv(
            f, use_bias=not gn, modulated=True,
            deformable_groups=cfg.quality.dcn_groups,
            kernel_init=normal(0.01), offset_init=nn.initializers.zeros,
            dtype=dtype)
      return conv(f, 3, 0.01, use_bias=not gn)

    self.inter_convs = [inter_conv(i) for i in range(n)]
    if gn:
      self.inter_norm = [self._norm() for _ in range(n)]
    hidden = (f * n) // (cfg.quality.la_down_rate * n)
    decomp = lambda: TaskDecomposition(f, n, hidden, cfg.gn_groups, gn, dtype)
    self.cls_decomp = decomp()
    self.reg_decomp = decomp()
    prior = nn.initializers.constant(
        -math.log((1 - cfg.prior_prob) / cfg.prior_prob))
    self.tood_cls = conv(cfg.num_classes, 3, 0.01, prior)
    self.tood_reg = conv(4, 3, 0.01)
    self.cls_prob_module = [conv(f // 4, 1, 0.01), None,
                            conv(1, 3, 0.01, prior)]
    self.reg_offset_module = [conv(f // 4, 1, 0.001), None,
                              conv(8, 3, 0.001)]
    if cfg.use_scale:
      self.scales = [self.param(f"scale_{l}", nn.initializers.ones, ())
                     for l in range(cfg.num_levels)]

  def __call__(self, x, level: int):
    cfg = self.cfg
    gn = cfg.head_norm == "gn"
    inter = []
    for i, conv in enumerate(self.inter_convs):
      x = conv(x)
      if gn:
        x = self.inter_norm[i](x)
      x = nn.relu(x)
      inter.append(x)
    feat = jnp.concatenate(inter, axis=-1)                      # [B, H, W, nF]
    avg = jnp.mean(feat.astype(jnp.float32), axis=(1, 2),
                   keepdims=True).astype(feat.dtype)
    cls_feat = self.cls_decomp(feat, avg)
    reg_feat = self.reg_decomp(feat, avg)

    cls = self.tood_cls(cls_feat).astype(jnp.float32)
    prob = self.cls_prob_module[2](nn.relu(self.cls_prob_module[0](feat)))
    score = score_logit(cls, prob.astype(jnp.float32))

    s = int(cfg.strides[level])
    reg = self.tood_reg(reg_feat).astype(jnp.float32)
    if cfg.box.name == "anchor_deltas":  # anchor_type 'anchor_based'.
      if cfg.use_scale:
        reg = reg * self.scales[level]
      dist = anchor_deltas_to_distances(reg, cfg.box.anchor_scale * s,
                                        cfg.box) / np.float32(s)
    else:
      dist = jnp.exp(reg)
      if cfg.use_scale:
        dist = dist * self.scales[level]
    offset = (s // 2 if cfg.location_offset == "half" else 0) / s
    _, h, w, _ = dist.shape
    cx = jnp.asarray(np.arange(w, dtype=np.float32) + offset)[None, None, :]
    cy = jnp.asarray(np.arange(h, dtype=np.float32) + offset)[None, :, None]
    box = jnp.stack([cx - dist[..., 0], cy - dist[..., 1],
                     cx + dist[..., 2], cy + dist[..., 3]], axis=-1)
    reg_offset = self.reg_offset_module[2](
        nn.relu(self.reg_offset_module[0](feat))).astype(jnp.float32)
    box = deform_sampling(box, reg_offset)                      # In strides.
    ltrb = jnp.stack([cx - box[..., 0], cy - box[..., 1],
                      box[..., 2] - cx, box[..., 3] - cy], axis=-1)
    return score, ltrb * np.float32(s)
