"""Conv kernel gradients as GEMMs (fcos_jax/train/cpu_conv.py)
against jax.grad of XLA's convolution and a NumPy brute force."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from batches import dummy_batch
from fcos_jax.model import config as config_lib
from fcos_jax.train import cpu_conv
from fcos_jax.model.fcos import init_variables
from fcos_jax.train.steps import compute_loss

NHWC = ("NHWC", "HWIO", "NHWC")

# (input shape, kernel size, stride, padding, output channels): the kinds
# of conv the network has (3x3 s1/s2, 1x1 s1/s2 shortcut, 7x7 s2 stem).
CONVS = {
    "3x3_s1": ((2, 9, 11, 5), 3, 1, 1, 6),
    "3x3_s2": ((2, 9, 12, 4), 3, 2, 1, 3),
    "1x1_s1": ((1, 6, 7, 8), 1, 1, 0, 5),
    "1x1_s2": ((2, 7, 9, 4), 1, 2, 0, 6),
    "7x7_s2": ((1, 15, 13, 3), 7, 2, 3, 4),
}


def _data(shape, k, cout, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(np.float32)
  w = rng.standard_normal((k, k, shape[-1], cout)).astype(np.float32)
  return x, w


def _grads(conv, x, w, dy):
  _, vjp = jax.vjp(conv, jnp.asarray(x), jnp.asarray(w))
  return vjp(jnp.asarray(dy))


@pytest.mark.parametrize("name", sorted(CONVS))
def test_forward_and_gradients_match_xla_conv(name):
  shape, k, s, p, cout = CONVS[name]
  x, w = _data(shape, k, cout)
  args = ((s, s), ((p, p), (p, p)))
  ref = lambda x, w: lax.conv_general_dilated(x, w, *args,
                                              dimension_numbers=NHWC)
  ours = lambda x, w: cpu_conv.conv_general_dilated(
      x, w, *args, dimension_numbers=NHWC, any_width=True)
  y = ref(x, w)
  np.testing.assert_array_equal(ours(x, w), y)  # The forward is XLA's.
  dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
  (dx_ref, dw_ref), (dx, dw) = _grads(ref, x, w, dy), _grads(ours, x, w, dy)
  np.testing.assert_array_equal(dx, dx_ref)  # So is the input gradient.
  scale = np.abs(dw_ref).max()
  np.testing.assert_allclose(dw / scale, dw_ref / scale, rtol=0, atol=1e-5)


def test_kernel_gradient_is_the_brute_force_sum():
  # dK[i, j, c, o] = sum_{n, h, w} xpad[n, s*h + i, s*w + j, c] dy[n, h, w, o]
  shape, k, s, p, cout = CONVS["3x3_s2"]
  x, w = _data(shape, k, cout)
  conv = lambda x, w: cpu_conv.conv_general_dilated(
      x, w, (s, s), ((p, p), (p, p)), dimension_numbers=NHWC, any_width=True)
  y = conv(x, w)
  dy = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
  _, dw = _grads(conv, x, w, dy)
  xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (0, 0)))
  ho, wo = y.shape[1:3]
  want = np.zeros(w.shape)
  for i in range(k):
    for j in range(k):
      win = xp[:, i:i + s * ho:s, j:j + s * wo:s]  # [n, ho, wo, c]
      want[i, j] = np.einsum("nhwc,nhwo->co", win, dy)
  np.testing.assert_allclose(dw, want, rtol=1e-5, atol=1e-5)


def test_what_it_does_not_cover_is_xla_conv_unchanged():
  x, w = _data((1, 8, 8, 4), 3, 4)
  for kwargs in ({"rhs_dilation": (2, 2)}, {"feature_group_count": 2}):
    wk = w[:, :, :2] if "feature_group_count" in kwargs else w
    args = (x, wk, (1, 1), ((2, 2), (2, 2)))
    np.testing.assert_array_equal(
        cpu_conv.conv_general_dilated(*args, dimension_numbers=NHWC,
                                      any_width=True, **kwargs),
        lax.conv_general_dilated(*args, dimension_numbers=NHWC, **kwargs))
  # "auto" leaves narrow convs (the small CPU config's) to XLA entirely.
  assert cpu_conv.MIN_OUT_CHANNELS > 4
  jaxpr = jax.make_jaxpr(jax.grad(lambda w: cpu_conv.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC).sum()))(w)
  assert "dot_general" not in str(jaxpr)


def test_modes():
  assert cpu_conv.use_gemm("auto") == (jax.default_backend() == "cpu")
  assert cpu_conv.use_gemm("gemm") and not cpu_conv.use_gemm("xla")
  with pytest.raises(ValueError, match="conv_kernel_grad"):
    config_lib.torchvision(conv_kernel_grad="onednn")


def test_train_loss_gradients_match_xla():
  """The whole model's loss gradient, every conv through the GEMM, against
  XLA's convs: the same to float32 rounding."""
  cfg = config_lib.torchvision(num_classes=4, depth=18, width=8,
                               fpn_channels=16, gn_groups=4, head_convs=1,
                               freeze_at=0)
  params = init_variables(cfg, jax.random.key(0))["params"]
  batch = dummy_batch(1, (64, 64), 5, 4, seed=0)
  grads = {}
  for mode in ("xla", "gemm"):
    c = cfg.replace(conv_kernel_grad=mode)
    fn = jax.jit(jax.grad(lambda p, c=c: compute_loss(p, batch, c)[0]))
    grads[mode] = fn(params)
  flat_ref = jax.tree_util.tree_leaves_with_path(grads["xla"])
  flat_new = jax.tree.leaves(grads["gemm"])
  differs = 0
  for (path, a), b in zip(flat_ref, flat_new):
    scale = float(np.abs(a).max()) or 1.0
    np.testing.assert_allclose(np.asarray(b) / scale, np.asarray(a) / scale,
                               rtol=0, atol=1e-5, err_msg=str(path))
    differs += not np.array_equal(a, b)
  assert differs > 0  # The GEMM did run (its sums round differently).
