"""Conv kernel gradients as GEMMs, for XLA:CPU.

XLA:CPU computes a conv's kernel gradient as a convolution whose "kernel" is
the whole output gradient, and runs it at a third of the speed of its
forward (46 GFLOP/s on the head's 3x3 256->256 conv at P3 of an 800x1344
image, against oneDNN's 131 in PyTorch). Its dot (Eigen's GEMM) is fast, so
here the kernel gradient of a wide NHWC conv is one dot per kernel tap
(i, j): dK[i, j] = window(i, j)^T @ dy, the (strided) window of the padded
input that tap sees, over all output positions. The forward and the input
gradient stay XLA's own convolutions. A `jax.custom_vjp` ties them
together, so the forward and its results are XLA's, bit for bit.

Narrow convs (the small CPU config's 8-64 channels) are left to XLA: there
each GEMM has a tiny output and a huge contraction and loses.

`conv_general_dilated` has `lax.conv_general_dilated`'s signature (flax's
`nn.Conv.conv_general_dilated` field) and falls back to it for what it does
not cover: dilations, feature groups, string padding, other layouts.
`kernel_gradients_as_gemm` installs it in every `nn.Conv` called inside it.
"""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from fcos_jax import errors

_NHWC = ("NHWC", "HWIO", "NHWC")
# flax passes its dimension numbers as lax.ConvDimensionNumbers for NHWC.
_NHWC_NUMBERS = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


# Where the GEMM wins (measured on the 2-core EPYC, R-50 and small-config
# shapes): wide outputs and a deep enough contraction.
MIN_OUT_CHANNELS = 128
MIN_PATCH_SIZE = 256  # kh * kw * Cin
MODES = ("auto", "gemm", "xla")


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == _NHWC_NUMBERS
  return tuple(dimension_numbers) == _NHWC


def _lax_conv(x, kernel, strides, padding):
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=_NHWC,
                                  precision=lax.Precision.HIGHEST)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
  return _lax_conv(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
  return _conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, res, dy):
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  dy2d = dy.reshape(-1, cout)
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  ho, wo = dy.shape[1:3]
  sh, sw = strides
  # Kernel gradient, one GEMM per tap (i, j): window(i, j)^T @ dy over all
  # output positions. (One GEMM over the im2col patches, [B*Ho*Wo,
  # kh*kw*Cin], was 11% slower on the R-50 step, on a kh*kw times larger
  # buffer.) A 1x1 conv has one window: the (strided) input.
  gemm = lambda win: lax.dot_general(
      win.reshape(-1, cin), dy2d, (((0,), (0,)), ((), ())),
      precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
  if kh * kw == 1:
    dk = gemm(xp[:, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw])
  else:
    # The taps in a loop: unrolled, XLA built every conv's windows early
    # (from the forward's activations) and kept them all live (R-50 step:
    # 3.8 GB instead of 2.1, same speed). Stride phases first, so that each
    # window is a plain dynamic slice.
    n, hp, wp, _ = xp.shape
    hq, wq = -(-hp // sh), -(-wp // sw)
    xq = jnp.pad(xp, ((0, 0), (0, hq * sh - hp), (0, wq * sw - wp), (0, 0)))
    phases = xq.reshape(n, hq, sh, wq, sw, cin).transpose(2, 4, 0, 1, 3, 5)
    taps = jnp.array([(i, j) for i in range(kh) for j in range(kw)],
                     jnp.int32)

    def tap_gemm(ij):
      i, j = ij[0], ij[1]
      win = lax.dynamic_slice(phases, (i % sh, j % sw, 0, i // sh, j // sw, 0),
                              (1, 1, n, ho, wo, cin))
      return gemm(win)

    dk = lax.map(tap_gemm, taps)
  dk = dk.reshape(kernel.shape).astype(kernel.dtype)
  # Input gradient: XLA's transposed convolution (as fast as oneDNN's here).
  _, vjp = jax.vjp(lambda x: _lax_conv(x, kernel, strides, padding), x)
  (dx,) = vjp(dy)
  return dx, dk


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None,
                         any_width=False):
  """`lax.conv_general_dilated`; for wide plain NHWC convs (any plain one
  with `any_width`), with the kernel gradient as GEMMs."""
  plain = (_is_nhwc(dimension_numbers) and rhs.ndim == 4
           and (any_width or (rhs.shape[3] >= MIN_OUT_CHANNELS and
                              np.prod(rhs.shape[:3]) >= MIN_PATCH_SIZE))
           and feature_group_count == 1
           and batch_group_count == 1 and not isinstance(padding, str)
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and preferred_element_type is None and lhs.dtype == rhs.dtype)
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  return _conv(lhs, rhs, tuple(window_strides),
               tuple(tuple(p) for p in padding))


def use_gemm(mode: str) -> bool:
  """Whether `mode` (ModelConfig.conv_kernel_grad) means the GEMM here:
  "auto" on the CPU backend only (wide convs), "gemm" always (every plain
  conv), "xla" never."""
  if mode not in MODES:
    raise errors.ConfigError(f"ModelConfig.conv_kernel_grad={mode!r} is not one of "
                             f"{MODES}")
  return mode == "gemm" or (mode == "auto" and jax.default_backend() == "cpu")


def _install(next_fun, args, kwargs, context, conv_fn):
  module = context.module
  if (isinstance(module, nn.Conv) and context.method_name == "__call__"
      and module.conv_general_dilated is None
      and module.conv_general_dilated_cls is None):
    # Modules are built anew at every apply, so this touches only this call.
    object.__setattr__(module, "conv_general_dilated", conv_fn)
  return next_fun(*args, **kwargs)


@contextlib.contextmanager
def kernel_gradients_as_gemm(mode: str = "auto"):
  """Inside: every `nn.Conv` computes through `conv_general_dilated`, when
  `use_gemm(mode)`; otherwise nothing changes."""
  if not use_gemm(mode):
    yield
    return
  conv_fn = functools.partial(conv_general_dilated,
                              any_width=mode == "gemm")
  with nn.intercept_methods(functools.partial(_install, conv_fn=conv_fn)):
    yield
