"""ResNet / ResNeXt backbone (NHWC) with frozen BatchNorm, returning C3-C5.

Padding is explicit and symmetric, as in PyTorch, so every stride-2 conv and
the stem's max pool give ceil(n / 2) cells: C3, C4, C5 have strides 8, 16, 32
and the sizes `fcos_jax.core.locations.level_sizes` predicts.

Parameter tree (the converters and `param_groups` rely on these names):
  stem/{conv, bn}
  res2 .. res5 / block{i} / {conv1, bn1, conv2, bn2[, conv3, bn3]}
                            [/ downsample_conv, downsample_bn]
  with cfg.dcn_stages, conv2 of those stages is a DCNv2:
    conv2/conv/kernel, conv2/offset/{kernel, bias}
Every `bn*` is a `FrozenBatchNorm` with params scale, bias, mean, var, or
with `cfg.backbone_norm == "gn"` a trainable GroupNorm with scale, bias.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcos_jax.model.config import ModelConfig
from fcos_jax.model.deform_conv import ModulatedDeformConv

# Blocks per stage (res2..res5) and whether the depth uses bottlenecks.
STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
                101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

# He init (fan_out, relu), as torchvision initialises an untrained ResNet.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# The official DFConv2d's offset conv: kaiming_uniform(a=1), bias 0.
_offset_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def uses_bottleneck(depth: int) -> bool:
  return depth >= 50


def stage_channels(cfg: ModelConfig) -> tuple[int, int, int, int]:
  """Output channels of res2..res5 (C2..C5)."""
  expansion = 4 if uses_bottleneck(cfg.depth) else 1
  return tuple(cfg.width * 2 ** i * expansion for i in range(4))


def bottleneck_width(planes: int, cfg: ModelConfig) -> int:
  """Channels of a bottleneck's 3x3 conv (and of the 1x1 before it).

  torchvision's rule, int(planes * width_per_group / 64) * groups, which is
  also maskrcnn-benchmark's groups * width_per_group * 2**(stage - 2) at
  the standard width 64: ResNet (1, 64) gives `planes`, ResNeXt 32x8d and
  64x4d give 4 * planes, resnext50_32x4d 2 * planes.
  """
  return int(planes * (cfg.width_per_group / 64.0)) * cfg.groups


def compute_dtype(cfg: ModelConfig):
  return jnp.bfloat16 if cfg.numerics.dtype == "bfloat16" else jnp.float32


def _pad(k: int):
  return ((k // 2, k // 2), (k // 2, k // 2))


def stop_gradient(x, enabled: bool = True):
  """jax.lax.stop_gradient, or `x` itself when not `enabled`: the modules'
  `stop_gradients=False` gives the same values without the op, for
  tracers that cannot lower it (the ONNX export)."""
  return jax.lax.stop_gradient(x) if enabled else x


def _normalise(x, scale, bias, mean, var, eps, dtype):
  """(x - mean) / sqrt(var + eps) * scale + bias as one multiply-add,
  its factors computed in float32 then cast."""
  mult = scale * jax.lax.rsqrt(var + eps)
  add = bias - mean * mult
  return x * mult.astype(dtype) + add.astype(dtype)


class FrozenBatchNorm(nn.Module):
  """y = (x - mean) / sqrt(var + eps) * scale + bias, with fixed statistics.

  All four vectors [C] are parameters (so checkpoints and converters see
  them) but never receive a gradient; the optimizer labels them "frozen".
  """

  eps: float
  dtype: Any = jnp.float32
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    sg = lambda v: stop_gradient(v, self.stop_gradients)
    scale = sg(self.param("scale", nn.initializers.ones, (c,)))
    bias = sg(self.param("bias", nn.initializers.zeros, (c,)))
    mean = sg(self.param("mean", nn.initializers.zeros, (c,)))
    var = sg(self.param("var", nn.initializers.ones, (c,)))
    return _normalise(x, scale, bias, mean, var, self.eps, self.dtype)


# The collection a trainable BatchNorm writes its batch statistics to when
# the caller makes it mutable (training); see `fcos_jax.model.batch_stats`.
BATCH_STATS = "batch_stats"


class BatchNorm(nn.Module):
  """BatchNorm with trainable scale and bias (backbone_norm="bn").

  Its running statistics `mean` and `var` are parameters like
  FrozenBatchNorm's (so converters, checkpoints, evaluation and export see
  one parameter tree), but never get a gradient. In training (the
  `BATCH_STATS` collection mutable) it normalises with the batch's own
  mean and biased variance over (B, H, W) and writes them to that
  collection, from which the train step moves the running statistics
  (`batch_stats.update_running_stats`). Under jit with the batch sharded
  over devices and hosts, the batch mean is the global one: SyncBN.
  Otherwise it uses the running statistics (eval-mode BN).
  """

  eps: float
  dtype: Any = jnp.float32
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    sg = lambda v: stop_gradient(v, self.stop_gradients)
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = sg(self.param("mean", nn.initializers.zeros, (c,)))
    var = sg(self.param("var", nn.initializers.ones, (c,)))
    if self.is_mutable_collection(BATCH_STATS):
      xf = x.astype(jnp.float32)
      mean = xf.mean(axis=(0, 1, 2))
      var = jnp.square(xf - mean).mean(axis=(0, 1, 2))
      self.put_variable(BATCH_STATS, "mean", sg(mean))
      self.put_variable(BATCH_STATS, "var", sg(var))
      # Count of values per channel, for the unbiased running variance.
      self.put_variable(BATCH_STATS, "count",
                        jnp.asarray(x.shape[0] * x.shape[1] * x.shape[2],
                                    jnp.float32))
    return _normalise(x, scale, bias, mean, var, self.eps, self.dtype)


def backbone_norm(cfg: ModelConfig, dtype, name: str,
                  stop_gradients: bool = True) -> nn.Module:
  """The backbone's normalisation layer named `name` (see the module doc)."""
  if cfg.backbone_norm == "frozen_bn":
    return FrozenBatchNorm(cfg.bn_eps, dtype, stop_gradients, name=name)
  if cfg.backbone_norm == "bn":
    return BatchNorm(cfg.bn_eps, dtype, stop_gradients, name=name)
  return _GroupNormAnyWidth(cfg.gn_groups, dtype, name=name)


class _GroupNormAnyWidth(nn.Module):
  """GroupNorm with the largest group count <= `groups` dividing C."""

  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    g = max(d for d in range(1, min(self.groups, c) + 1) if c % d == 0)
    norm = nn.GroupNorm(num_groups=g, epsilon=1e-5, dtype=self.dtype,
                        param_dtype=jnp.float32, name="gn")
    return norm(x)


def _conv(features, k, stride, name, dtype, groups=1):
  return nn.Conv(features, (k, k), strides=(stride, stride), padding=_pad(k),
                 use_bias=False, kernel_init=_conv_init, dtype=dtype,
                 param_dtype=jnp.float32, feature_group_count=groups,
                 name=name)


def _shortcut(x, channels: int, stride: int, bn, dtype):
  """The residual branch: identity, or a strided 1x1 conv + norm when the
  block changes the resolution or the width."""
  if stride == 1 and x.shape[-1] == channels:
    return x
  return bn("downsample_bn")(_conv(channels, 1, stride, "downsample_conv", dtype)(x))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 (x4 channels) residual block; ResNeXt when
  cfg.groups > 1 (the 3x3 is a grouped conv, `bottleneck_width` wide);
  with `dcn` the 3x3 is a DCNv2 (conv2/{conv, offset}; DCN v1 with
  cfg.dcn_modulated=False)."""

  planes: int
  stride: int
  cfg: ModelConfig
  dcn: bool = False
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    cfg, dtype = self.cfg, compute_dtype(self.cfg)
    bn = lambda name: backbone_norm(cfg, dtype, name, self.stop_gradients)
    s1, s3 = (self.stride, 1) if cfg.stride_in_1x1 else (1, self.stride)
    inner = bottleneck_width(self.planes, cfg)
    y = nn.relu(bn("bn1")(_conv(inner, 1, s1, "conv1", dtype)(x)))
    if self.dcn:
      conv2 = ModulatedDeformConv(inner, 3, s3, feature_group_count=cfg.groups,
                                  modulated=cfg.dcn_modulated,
                                  kernel_init=_conv_init,
                                  offset_init=_offset_init, dtype=dtype,
                                  name="conv2")
    else:
      conv2 = _conv(inner, 3, s3, "conv2", dtype, cfg.groups)
    y = nn.relu(bn("bn2")(conv2(y)))
    y = bn("bn3")(_conv(self.planes * 4, 1, 1, "conv3", dtype)(y))
    return nn.relu(y + _shortcut(x, self.planes * 4, self.stride, bn, dtype))


class BasicBlock(nn.Module):
  """3x3 -> 3x3 residual block (ResNet-18/34)."""

  planes: int
  stride: int
  cfg: ModelConfig
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    cfg, dtype = self.cfg, compute_dtype(self.cfg)
    bn = lambda name: backbone_norm(cfg, dtype, name, self.stop_gradients)
    y = nn.relu(bn("bn1")(_conv(self.planes, 3, self.stride, "conv1", dtype)(x)))
    y = bn("bn2")(_conv(self.planes, 3, 1, "conv2", dtype)(y))
    return nn.relu(y + _shortcut(x, self.planes, self.stride, bn, dtype))


class Stem(nn.Module):
  """7x7/2 conv, frozen BN, ReLU, 3x3/2 max pool (padding 1): stride 4."""

  cfg: ModelConfig
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    dtype = compute_dtype(self.cfg)
    x = _conv(self.cfg.width, 7, 2, "conv", dtype)(x)
    x = nn.relu(backbone_norm(self.cfg, dtype, "bn", self.stop_gradients)(x))
    # max_pool pads with -inf, like PyTorch's MaxPool2d.
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))


class Stage(nn.Module):
  """One ResNet stage; the first block carries the stride."""

  planes: int
  blocks: int
  stride: int
  cfg: ModelConfig
  dcn: bool = False  # Every block's 3x3 is deformable (bottlenecks only).
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    bottleneck = uses_bottleneck(self.cfg.depth)
    for i in range(self.blocks):
      stride = self.stride if i == 0 else 1
      name = f"block{i}"
      sg = self.stop_gradients
      x = (Bottleneck(self.planes, stride, self.cfg, self.dcn, sg, name=name)
           if bottleneck else BasicBlock(self.planes, stride, self.cfg, sg,
                                         name=name))(x)
    return x


class ResNet(nn.Module):
  """images [B, H, W, 3] -> (C3, C4, C5) with strides 8, 16, 32.

  Stage k (stem = 1, res2 = 2, ..., res5 = 5) is frozen when
  k <= cfg.freeze_at: its output passes through `stop_gradient`, so no
  backward work is spent on it or anything before it.
  """

  cfg: ModelConfig
  stop_gradients: bool = True  # False: no stop_gradient op (same values).

  @nn.compact
  def __call__(self, x):
    cfg, sg = self.cfg, self.stop_gradients
    freeze = lambda k, y: stop_gradient(y, sg) if k <= cfg.freeze_at else y
    x = freeze(1, Stem(cfg, sg, name="stem")(x.astype(compute_dtype(cfg))))
    outs = []
    for k, blocks in zip(range(2, 6), STAGE_BLOCKS[cfg.depth]):
      planes = cfg.width * 2 ** (k - 2)
      x = Stage(planes, blocks, 1 if k == 2 else 2, cfg, k in cfg.dcn_stages,
                sg, name=f"res{k}")(x)
      x = freeze(k, x)
      outs.append(x)
    # C2 too when the FPN makes P2 (strides from 4, `config.with_p2`).
    return tuple(outs) if cfg.strides[0] == 4 else tuple(outs[1:])
