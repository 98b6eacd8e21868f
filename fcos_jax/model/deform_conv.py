"""Modulated deformable convolution (DCNv2, Zhu et al. 2019), NHWC.

Each kernel tap k of output cell (i, j) reads the input at

    (i * s - pad + (k // kw) * d + dy,  j * s - pad + (k % kw) * d + dx)

by bilinear interpolation (zero outside the image), times a mask in [0, 1];
the samples are then contracted with the kernel like a plain conv.
(dy, dx, mask) come per deformable group, per tap, per output cell, from a
plain conv on the same input (`ModulatedDeformConv`).

Channel layouts follow the official CUDA kernels (and
`torchvision.ops.deform_conv2d`), so converted weights need no reordering:
offset channel g * 2K + 2k is dy of tap k in deformable group g, the next
one dx; mask channel g * K + k. Input channel c belongs to deformable group
c // (C / G).

The sampling is one gather of the four bilinear corners from the flattened
input (static shapes: out-of-image corners read a clamped index with weight
0), then one einsum with the kernel; no scatter in the forward pass.

Shapes: B = batch, H, W = input, Ho, Wo = output, C = input channels,
O = output channels, G = deformable groups, K = kh * kw taps.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def output_size(n: int, k: int, stride: int, pad: int, dilation: int) -> int:
  return (n + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def modulated_deform_conv(x, offset, mask, kernel, *, strides=1, padding=1,
                          dilation=1, feature_group_count: int = 1,
                          deformable_groups: int = 1, precision=None):
  """DCNv2 without bias.

  Args:
    x: [B, H, W, C].
    offset: [B, Ho, Wo, G * 2K], (dy, dx) per tap, in input pixels.
    mask: [B, Ho, Wo, G * K], the modulation (already through a sigmoid),
      or None: no modulation (DCNv1, `DeformConv`).
    kernel: [kh, kw, C / feature_group_count, O] (Flax's conv layout).
    strides, padding, dilation: int or (h, w); padding is symmetric.
    feature_group_count: grouped conv (ResNeXt), as in `nn.Conv`.
    deformable_groups: G.

  Returns [B, Ho, Wo, O] in the dtype of x.
  """
  (sh, sw), (ph, pw), (dh, dw) = map(_pair, (strides, padding, dilation))
  b, h, w, c = x.shape
  kh, kw, cin_group, out = kernel.shape
  k, g = kh * kw, deformable_groups
  ho, wo = output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)
  if c % g or c != cin_group * feature_group_count:
    raise ValueError(
        f"modulated_deform_conv: {c} input channels do not fit "
        f"deformable_groups={g} and a kernel for {cin_group} x "
        f"{feature_group_count} groups.")
  if offset.shape != (b, ho, wo, 2 * g * k) or (
      mask is not None and mask.shape != (b, ho, wo, g * k)):
    raise ValueError(
        f"modulated_deform_conv: offset {offset.shape} / mask "
        f"{None if mask is None else mask.shape}, expected "
        f"{(b, ho, wo, 2 * g * k)} / {(b, ho, wo, g * k)}.")

  # Sampling positions [B, Ho, Wo, G, K] in float32 (positions in a
  # 1000-px image need more than bfloat16's 8 bits).
  offset = offset.astype(jnp.float32).reshape(b, ho, wo, g, k, 2)
  tap_y = (jnp.arange(k) // kw) * dh
  tap_x = (jnp.arange(k) % kw) * dw
  base_y = (jnp.arange(ho) * sh - ph)[:, None, None, None] + tap_y
  base_x = (jnp.arange(wo) * sw - pw)[None, :, None, None] + tap_x
  py = base_y + offset[..., 0]
  px = base_x + offset[..., 1]
  y0, x0 = jnp.floor(py), jnp.floor(px)
  ly, lx = py - y0, px - x0

  # The four corners [B, Ho, Wo, G, K, 4]: index into H * W, and weight
  # (bilinear x mask, 0 for corners outside the image).
  yy = jnp.stack([y0, y0, y0 + 1, y0 + 1], -1)
  xx = jnp.stack([x0, x0 + 1, x0, x0 + 1], -1)
  wy = jnp.stack([1 - ly, 1 - ly, ly, ly], -1)
  wx = jnp.stack([1 - lx, lx, 1 - lx, lx], -1)
  inside = (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
  weight = jnp.where(inside, wy * wx, 0.0)
  if mask is not None:
    weight = weight * mask.astype(jnp.float32).reshape(b, ho, wo, g, k, 1)
  index = (jnp.clip(yy, 0, h - 1) * w + jnp.clip(xx, 0, w - 1)).astype(jnp.int32)

  # Gather whole rows of C/G channels per (image, deformable group): one
  # index per sample and corner (a take_along_axis would index every
  # channel, ~10x slower on CPU), then the 4 corners' weighted sum.
  xg = x.reshape(b, h * w, g, c // g).transpose(0, 2, 1, 3).reshape(
      b * g, h * w, c // g)
  index = index.transpose(0, 3, 1, 2, 4, 5).reshape(b * g, -1)
  values = jax.vmap(lambda rows, i: rows.at[i].get(mode="promise_in_bounds")
                    )(xg, index).reshape(b * g, ho * wo * k, 4, c // g)
  weight = weight.transpose(0, 3, 1, 2, 4, 5).reshape(b * g, ho * wo * k, 4)
  cols = jnp.einsum("nmqc,nmq->nmc", values, weight.astype(x.dtype),
                    precision=precision)  # [B*G, Ho*Wo*K, C/G]
  cols = cols.reshape(b, g, ho, wo, k, c // g).transpose(0, 2, 3, 4, 1, 5)
  cols = cols.reshape(b, ho, wo, k, feature_group_count, cin_group)

  kernel = kernel.astype(x.dtype).reshape(
      k, cin_group, feature_group_count, out // feature_group_count)
  y = jnp.einsum("bhwkfc,kcfo->bhwfo", cols, kernel, precision=precision)
  return y.reshape(b, ho, wo, out)


class ModulatedDeformConv(nn.Module):
  """A DCNv2 layer with its own offset/mask conv (the official `DFConv2d`
  with modulation): [B, H, W, C] -> [B, Ho, Wo, features]. With
  `modulated=False` a DCN v1 layer (mmcv's `DCN`, DeformConv2dPack): the
  offset conv gives only the G * 2K offsets and the mask is 1.

  Submodules, named as the official checkpoint's `<name>.offset.*` and
  `<name>.conv.*`:
    offset: plain conv (with bias, no groups, the same kernel, stride,
            padding and dilation) giving G * 3K channels: the first G * 2K
            are the offsets, the last G * K the mask logits (sigmoid).
    conv:   kernel [kh, kw, C / feature_group_count, features] (+ bias).
  """

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 1
  dilation: int = 1
  feature_group_count: int = 1
  deformable_groups: int = 1
  use_bias: bool = False
  modulated: bool = True  # False: DCN v1, no mask.
  kernel_init: Callable = nn.initializers.lecun_normal()
  offset_init: Callable = nn.initializers.zeros
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, g = self.kernel_size ** 2, self.deformable_groups
    pad = ((self.padding, self.padding),) * 2
    offset_mask = nn.Conv(
        (3 if self.modulated else 2) * g * k, (self.kernel_size,) * 2,
        strides=self.strides,
        padding=pad, kernel_dilation=self.dilation, kernel_init=self.offset_init,
        bias_init=nn.initializers.zeros, dtype=self.dtype,
        param_dtype=jnp.float32, name="offset")(x)
    offset = offset_mask[..., :2 * g * k]
    mask = (jax.nn.sigmoid(offset_mask[..., 2 * g * k:].astype(jnp.float32))
            if self.modulated else
            jnp.ones((*offset_mask.shape[:-1], g * k), jnp.float32))
    conv = _DeformKernel(self.features, self.kernel_size,
                         x.shape[-1] // self.feature_group_count,
                         self.use_bias, self.kernel_init, name="conv")
    kernel, bias = conv()
    y = modulated_deform_conv(
        x.astype(self.dtype), offset, mask, kernel, strides=self.strides,
        padding=self.padding, dilation=self.dilation,
        feature_group_count=self.feature_group_count, deformable_groups=g)
    return y if bias is None else y + bias.astype(self.dtype)


class DeformConv(nn.Module):
  """A deformable conv without modulation (DCNv1; mmcv's DeformConv2d)
  whose offsets the caller computes (VFNet's star offsets, from its initial
  box): (x [B, H, W, C], offset [B, Ho, Wo, 2K] (dy, dx) per tap) ->
  [B, Ho, Wo, features]. One deformable group, no feature groups.

  Parameters: kernel [k, k, C, features] (and bias with use_bias; mmcv's
  DeformConv2d has none). Init: uniform(+-1/sqrt(C k^2)), mmcv's
  reset_parameters."""

  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 1
  use_bias: bool = False
  kernel_init: Callable = nn.initializers.variance_scaling(
      1 / 3, "fan_in", "uniform")
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, offset):
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size, x.shape[-1],
                         self.features), jnp.float32)
    y = modulated_deform_conv(x.astype(self.dtype), offset, None, kernel,
                              strides=self.strides, padding=self.padding)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,),
                        jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class _DeformKernel(nn.Module):
  """Holds the deformable conv's kernel (and bias), under `conv/`."""

  features: int
  kernel_size: int
  in_per_group: int
  use_bias: bool
  kernel_init: Callable

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", self.kernel_init,
                        (self.kernel_size, self.kernel_size,
                         self.in_per_group, self.features), jnp.float32)
    bias = (self.param("bias", nn.initializers.zeros, (self.features,),
                       jnp.float32) if self.use_bias else None)
    return kernel, bias
