"""The FCOS head, shared by every FPN level.

Two towers of `cfg.head_convs` x [conv3x3 + bias, GroupNorm (when
`cfg.head_norm == "gn"`), ReLU]: the class tower feeds the class logits, the
box tower the box regression; centerness reads the box tower
(`centerness_on="reg"`) or the class tower ("cls").

Init: convs N(0, 0.01), bias 0; class bias -log((1 - p) / p), p =
`cfg.prior_prob`; one learnable scalar Scale per level, init 1
(`cfg.use_scale`).

With `cfg.head_dcn` the last conv of each tower is a DCNv2 (official
USE_DCN_IN_TOWER): cls_tower_{n-1}/{conv, offset}/{kernel, bias}.

Parameter tree: cls_tower_{i}, box_tower_{i} (kernel, bias),
cls_norm_{i}, box_norm_{i} (GroupNorm scale, bias), cls_logits,
box_regression, centerness (kernel, bias), scale_{l} (scalar).

GFL (`cfg.quality.name == "gfl_joint"`, mmdetection's GFLHead): the same
towers, no centerness conv, and box_regression gives 4 x (reg_max + 1)
logits, scaled by the level's Scale (before any activation, as mmdetection
scales them), one distribution over {0, ..., reg_max} strides per side; its
expectation (`integral`) is the distance.

Anchor deltas (`cfg.box.name == "anchor_deltas"`, mmdetection's ATSSHead):
box_regression's 4 channels, scaled by the level's Scale with no
activation, are DeltaXYWH deltas from the location's square anchor; the
head returns the decoded box as (l, t, r, b) pixels from the location
(`anchor_deltas_to_distances`), so everything downstream reads distances.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcos_jax.model.config import ModelConfig, uses_distribution
from fcos_jax.model.deform_conv import ModulatedDeformConv
from fcos_jax.model.resnet import compute_dtype

# Matches PyTorch's GroupNorm default (Flax's default is 1e-6).
GN_EPS = 1e-5


def integral(logits):
  """GFL's Integral: [..., n + 1] logits of a distribution over {0, ..., n}
  -> [...] its expectation sum_i softmax(logits)_i * i, float32."""
  logits = logits.astype(jnp.float32)
  n = logits.shape[-1] - 1
  return jax.nn.softmax(logits, axis=-1) @ jnp.arange(n + 1, dtype=jnp.float32)


def anchor_deltas_to_distances(deltas, anchor_side: float, box):
  """mmdetection's DeltaXYWHBBoxCoder.decode (target_means 0) from a square
  anchor of side `anchor_side` centred on the location, as distances.

  deltas [..., 4] (dx, dy, dw, dh), box: an AnchorDeltasBox (target_stds,
  wh_ratio_clip) -> [..., 4] (l, t, r, b) pixels from the anchor centre,
  float32: the box centre is offset by (side * dx * std_x, side * dy *
  std_y), its size side * exp(dw * std_w) (dw, dh clamped to
  |log(wh_ratio_clip)|). Distances may be negative (a box beside its
  location); l + r and t + b never are."""
  deltas = deltas.astype(jnp.float32)
  stds = jnp.asarray(box.target_stds, jnp.float32)
  d = deltas * stds
  max_ratio = abs(math.log(box.wh_ratio_clip))
  wh = anchor_side * jnp.exp(jnp.clip(d[..., 2:], -max_ratio, max_ratio))
  centre = anchor_side * d[..., :2]  # (x, y) offsets from the location.
  return jnp.concatenate([wh * 0.5 - centre, centre + wh * 0.5], axis=-1)


class FCOSHead(nn.Module):
  """One level's features [B, H, W, F] -> (cls [B, H, W, C], reg [B, H, W, 4],
  ctr [B, H, W]), all float32. Call it once per level with `level` set.
  GFL: (cls, reg, None, dist [B, H, W, 4, reg_max + 1]).

  reg is `relu(scale_l * x)` in stride units when `cfg.norm_reg_targets`,
  else `exp(scale_l * x)` in pixels; ctr is a logit.
  """

  cfg: ModelConfig

  def _conv(self, features, bias_init=nn.initializers.zeros):
    """The head's 3x3 conv: N(0, 0.01) kernel, bias `bias_init`."""
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)),
                   kernel_init=nn.initializers.normal(0.01),
                   bias_init=bias_init, dtype=compute_dtype(self.cfg),
                   param_dtype=jnp.float32)

  def _norm(self):
    return nn.GroupNorm(num_groups=self.cfg.gn_groups, epsilon=GN_EPS,
                        use_fast_variance=False, dtype=compute_dtype(self.cfg),
                        param_dtype=jnp.float32)

  def _setup_towers(self):
    """The class and box towers (and their GroupNorms): the layers every
    head of the family shares."""
    cfg, dtype = self.cfg, compute_dtype(self.cfg)
    normal = nn.initializers.normal(0.01)
    conv, norm = self._conv, self._norm

    def tower_conv(i):
      if cfg.head_dcn and i == n - 1:
        # The official DFConv2d in a tower: the head's N(0, 0.01) init
        # reaches its offset conv only; the deformable kernel keeps
        # uniform(+-1/sqrt(fan_in)), the bias 0.
        return ModulatedDeformConv(
            f, use_bias=True, modulated=cfg.dcn_modulated,
            offset_init=normal, dtype=dtype,
            kernel_init=nn.initializers.variance_scaling(
                1 / 3, "fan_in", "uniform"))
      return conv(f)

    n, f, gn = cfg.head_convs, cfg.fpn_channels, cfg.head_norm == "gn"
    self.cls_tower = [tower_conv(i) for i in range(n)]
    self.box_tower = [tower_conv(i) for i in range(n)]
    if gn:
      self.cls_norm = [norm() for _ in range(n)]
      self.box_norm = [norm() for _ in range(n)]

  def setup(self):
    cfg, conv = self.cfg, self._conv
    self._setup_towers()
    prior = -math.log((1 - cfg.prior_prob) / cfg.prior_prob)
    self.cls_logits = conv(cfg.num_classes, nn.initializers.constant(prior))
    if uses_distribution(cfg):
      self.box_regression = conv(4 * (cfg.quality.reg_max + 1))
    else:
      self.box_regression = conv(4)
      self.centerness = conv(1)
    if cfg.use_scale:
      self.scales = [self.param(f"scale_{l}", nn.initializers.ones, ())
                     for l in range(cfg.num_levels)]

  def _tower(self, x, convs, norms):
    for i, conv in enumerate(convs):
      x = conv(x)
      if norms is not None:
        x = norms[i](x)
      x = nn.relu(x)
    return x

  def __call__(self, x, level: int):
    gn = self.cfg.head_norm == "gn"
    cls_feat = self._tower(x, self.cls_tower, self.cls_norm if gn else None)
    box_feat = self._tower(x, self.box_tower, self.box_norm if gn else None)
    cls = self.cls_logits(cls_feat).astype(jnp.float32)
    reg = self.box_regression(box_feat).astype(jnp.float32)
    if uses_distribution(self.cfg):
      # GFL: (cls, distances [.., 4] in strides, None, logits [.., 4, n+1]).
      if self.cfg.use_scale:
        reg = reg * self.scales[level]
      dist = reg.reshape(*reg.shape[:-1], 4, self.cfg.quality.reg_max + 1)
      return cls, integral(dist), None, dist
    ctr_feat = box_feat if self.cfg.quality.on == "reg" else cls_feat
    ctr = self.centerness(ctr_feat).astype(jnp.float32)[..., 0]
    if self.cfg.use_scale:
      reg = reg * self.scales[level]
    if self.cfg.box.name == "anchor_deltas":  # mmdetection's ATSSHead.
      side = self.cfg.box.anchor_scale * self.cfg.strides[level]
      return cls, anchor_deltas_to_distances(reg, side, self.cfg.box), ctr
    reg = nn.relu(reg) if self.cfg.norm_reg_targets else jnp.exp(reg)
    return cls, reg, ctr
