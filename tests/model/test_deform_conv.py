"""DCNv2 against a NumPy brute force, torchvision.ops.deform_conv2d (values
and gradients) and the plain conv it becomes with zero offsets."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.model.deform_conv import ModulatedDeformConv, modulated_deform_conv


@pytest.fixture(autouse=True)
def float32_convolutions():
  with jax.default_matmul_precision("highest"):
    yield


def bilinear_zero_outside(img, y, x):
  """img [H, W] at real (y, x): the official rule, 0 where (y, x) is not
  inside (-1, H) x (-1, W), missing corners count 0."""
  h, w = img.shape
  if not (-1 < y < h and -1 < x < w):
    return 0.0
  y0, x0 = int(np.floor(y)), int(np.floor(x))
  total = 0.0
  for yy, xx in itertools.product((y0, y0 + 1), (x0, x0 + 1)):
    if 0 <= yy < h and 0 <= xx < w:
      total += (1 - abs(y - yy)) * (1 - abs(x - xx)) * img[yy, xx]
  return total


def numpy_dcn(x, offset, mask, kernel, stride, pad, dil, groups, dgroups):
  """Loops over every output value; NHWC in, HWIO kernel."""
  b, h, w, c = x.shape
  kh, kw, cin_g, o = kernel.shape
  ho = (h + 2 * pad - dil * (kh - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dil * (kw - 1) - 1) // stride + 1
  k = kh * kw
  out = np.zeros((b, ho, wo, o))
  cpg = c // dgroups
  for n, i, j in itertools.product(range(b), range(ho), range(wo)):
    # Sampled input [K, C].
    cols = np.zeros((k, c))
    for t in range(k):
      for ch in range(c):
        g = ch // cpg
        dy = offset[n, i, j, g * 2 * k + 2 * t]
        dx = offset[n, i, j, g * 2 * k + 2 * t + 1]
        y = i * stride - pad + (t // kw) * dil + dy
        xx = j * stride - pad + (t % kw) * dil + dx
        cols[t, ch] = mask[n, i, j, g * k + t] * bilinear_zero_outside(
            x[n, :, :, ch], y, xx)
    for oc in range(o):
      fg = oc // (o // groups)
      out[n, i, j, oc] = sum(
          cols[t, fg * cin_g + ci] * kernel[t // kw, t % kw, ci, oc]
          for t in range(k) for ci in range(cin_g))
  return out


def random_case(rng, b, h, w, c, o, stride, pad, dil, groups, dgroups,
                scale=2.0, ksize=3):
  ho = (h + 2 * pad - dil * (ksize - 1) - 1) // stride + 1
  wo = (w + 2 * pad - dil * (ksize - 1) - 1) // stride + 1
  k = ksize * ksize
  x = rng.normal(size=(b, h, w, c)).astype(np.float32)
  # Offsets up to +-scale pixels: samples fall outside the image too.
  offset = (scale * rng.uniform(-1, 1, (b, ho, wo, 2 * dgroups * k))
            ).astype(np.float32)
  mask = rng.uniform(0, 1, (b, ho, wo, dgroups * k)).astype(np.float32)
  kernel = rng.normal(size=(ksize, ksize, c // groups, o)).astype(np.float32)
  return x, offset, mask, kernel


CASES = [  # stride, pad, dil, groups, dgroups
    (1, 1, 1, 1, 1), (2, 1, 1, 1, 1), (1, 2, 2, 2, 1), (2, 1, 1, 2, 2)]


@pytest.mark.parametrize("stride,pad,dil,groups,dgroups", CASES)
def test_matches_numpy_brute_force(stride, pad, dil, groups, dgroups):
  rng = np.random.default_rng(stride * 7 + dil * 3 + groups + dgroups)
  args = random_case(rng, 2, 7, 6, 4, 4, stride, pad, dil, groups, dgroups)
  got = modulated_deform_conv(*args, strides=stride, padding=pad,
                              dilation=dil, feature_group_count=groups,
                              deformable_groups=dgroups)
  want = numpy_dcn(*args, stride, pad, dil, groups, dgroups)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_integer_offsets_move_the_sample():
  """A whole-pixel offset (1, -1) on every tap of a 1x1 kernel reads the
  input one row down and one column left, zero past the border."""
  x = np.arange(20, dtype=np.float32).reshape(1, 4, 5, 1)
  offset = np.tile(np.array([1.0, -1.0], np.float32), (1, 4, 5, 1))
  mask = np.ones((1, 4, 5, 1), np.float32)
  y = modulated_deform_conv(x, offset, mask, np.ones((1, 1, 1, 1), np.float32),
                            padding=0)
  want = np.zeros((4, 5), np.float32)
  want[:3, 1:] = x[0, 1:, :4, 0]
  np.testing.assert_array_equal(np.asarray(y)[0, ..., 0], want)


def test_zero_offsets_are_a_plain_conv_times_the_mask():
  rng = np.random.default_rng(0)
  x, _, _, kernel = random_case(rng, 2, 9, 8, 6, 4, 2, 1, 1, 2, 1)
  offset = np.zeros((2, 5, 4, 18), np.float32)
  mask = np.full((2, 5, 4, 9), 0.5, np.float32)
  got = modulated_deform_conv(x, offset, mask, kernel, strides=2, padding=1,
                              feature_group_count=2)
  plain = jax.lax.conv_general_dilated(
      x, kernel, (2, 2), ((1, 1), (1, 1)), feature_group_count=2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(np.asarray(got), 0.5 * np.asarray(plain),
                             rtol=1e-5, atol=1e-5)


def test_module_starts_as_half_a_plain_conv_and_is_jittable():
  """Zero-initialised offset/mask conv: offsets 0, mask sigmoid(0) = 0.5."""
  layer = ModulatedDeformConv(8, strides=2, use_bias=True)
  x = np.random.default_rng(1).normal(size=(2, 11, 10, 4)).astype(np.float32)
  variables = layer.init(jax.random.key(0), x)
  params = variables["params"]
  assert params["offset"]["kernel"].shape == (3, 3, 4, 27)
  assert params["offset"]["bias"].shape == (27,)
  assert params["conv"]["kernel"].shape == (3, 3, 4, 8)
  assert params["conv"]["bias"].shape == (8,)
  y = jax.jit(layer.apply)(variables, x)
  plain = nn.Conv(8, (3, 3), strides=2, padding=((1, 1), (1, 1)),
                  use_bias=False).apply(
                      {"params": {"kernel": params["conv"]["kernel"]}}, x)
  assert y.shape == (2, 6, 5, 8)
  np.testing.assert_allclose(np.asarray(y), 0.5 * np.asarray(plain),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.torch
@pytest.mark.parametrize("stride,pad,dil,groups,dgroups", CASES)
def test_values_and_gradients_match_torchvision(stride, pad, dil, groups,
                                                dgroups):
  torch = pytest.importorskip("torch")
  tv_ops = pytest.importorskip("torchvision.ops")
  rng = np.random.default_rng(10 + stride + dil + groups + dgroups)
  x, offset, mask, kernel = random_case(rng, 2, 12, 10, 8, 6, stride, pad,
                                        dil, groups, dgroups, scale=3.0)
  def ours(x, offset, mask, kernel):
    return modulated_deform_conv(x, offset, mask, kernel, strides=stride,
                                 padding=pad, dilation=dil,
                                 feature_group_count=groups,
                                 deformable_groups=dgroups)

  y = ours(x, offset, mask, kernel)
  cot = rng.normal(size=y.shape).astype(np.float32)
  grads = jax.grad(lambda *a: jnp.sum(ours(*a) * cot), argnums=(0, 1, 2, 3))(
      x, offset, mask, kernel)

  nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy()
                                    ).double().requires_grad_()
  tx, toff, tmask = nchw(x), nchw(offset), nchw(mask)
  tw = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).double(
      ).requires_grad_()
  ty = tv_ops.deform_conv2d(tx, toff, tw, stride=stride, padding=pad,
                            dilation=dil, mask=tmask)
  (ty * nchw(cot).detach()).sum().backward()
  want_y = ty.detach().numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-4, atol=1e-4)
  to_nhwc = lambda t: t.grad.numpy().transpose(0, 2, 3, 1)
  wants = (to_nhwc(tx), to_nhwc(toff), to_nhwc(tmask),
           tw.grad.numpy().transpose(2, 3, 1, 0))
  for name, got, want in zip(("x", "offset", "mask", "kernel"), grads, wants):
    scale = np.abs(want).max()
    err = np.abs(np.asarray(got) - want).max()
    # Offset gradients jump where a sample crosses a pixel line; random
    # offsets sit on one with probability 0, so the tolerance stays tight.
    assert err <= 1e-4 * scale, (name, err, scale)


def test_benchmark_section_runs():
  """benchmarks.bench_deform_conv at a tiny size (its rows, not a timing)."""
  from benchmarks import bench_deform_conv
  r = bench_deform_conv.run({"tiny": ((6, 8), 8)}, repeats=1, with_torch=False)
  assert set(r["sizes"]["tiny"]) == {"plain 3x3 fwd", "plain 3x3 fwd+bwd",
                                     "dcnv2 fwd", "dcnv2 fwd+bwd"}


def test_model_config_wiring_and_optimizer_groups():
  """dcn_stages / head_dcn put DCNv2 where the official configs do, with
  the offset convs' biases in the bias group; bad values are refused."""
  from flax import traverse_util
  from fcos_jax.convert import torchvision as tv
  from fcos_jax.model import config as config_lib
  from fcos_jax.model.fcos import init_variables
  from fcos_jax.train.param_groups import param_labels
  cfg = config_lib.official(width=8, fpn_channels=32, gn_groups=8,
                            num_classes=3, dcn_stages=(4, 5), head_dcn=True)
  shapes = jax.eval_shape(lambda r: init_variables(cfg, r), jax.random.key(0))
  flat = traverse_util.flatten_dict(shapes["params"])
  labels = traverse_util.flatten_dict(param_labels(shapes["params"], cfg))
  dcn = {"/".join(p[:-2]) for p in flat if p[-2] == "offset"}
  assert dcn == ({f"backbone/res4/block{i}/conv2" for i in range(6)} |
                 {f"backbone/res5/block{i}/conv2" for i in range(3)} |
                 {"head/cls_tower_3", "head/box_tower_3"})
  assert ("backbone", "res3", "block0", "conv2", "kernel") in flat
  for p, label in labels.items():
    if p[0] == "backbone" and p[-3] == "conv2":
      assert label == ("bias" if p[-1] == "bias" else "weight"), p
  assert labels[("head", "cls_tower_3", "offset", "bias")] == "bias"
  with pytest.raises(ValueError, match="dcn_stages"):
    config_lib.official(depth=18, dcn_stages=(3,))
  with pytest.raises(ValueError, match="dcn_stages"):
    config_lib.official(dcn_stages=(6,))
  # torchvision's FCOS has no deformable convs (its ImageNet ResNets start
  # deformable backbones: tests/convert/test_convert_imagenet.py).
  with pytest.raises(ValueError, match=r"dcn_stages=\(4, 5\) \(needs \(\)\)"):
    tv.convert_fcos_state_dict({}, config_lib.torchvision(dcn_stages=(4, 5)))


def test_bfloat16_compute_stays_close():
  """dtype=bfloat16 (sampling positions stay float32) is within bfloat16
  rounding of the float32 layer."""
  layer32 = ModulatedDeformConv(8, use_bias=True)
  layer16 = ModulatedDeformConv(8, use_bias=True, dtype=jnp.bfloat16)
  x = np.random.default_rng(2).normal(size=(1, 12, 10, 8)).astype(np.float32)
  variables = layer32.init(jax.random.key(1), x)
  variables = jax.tree.map(lambda v: v + 0.05, variables)  # Non-zero offsets.
  y32 = np.asarray(layer32.apply(variables, x))
  y16 = np.asarray(layer16.apply(variables, x).astype(jnp.float32))
  assert np.isfinite(y16).all()
  assert np.abs(y16 - y32).max() <= 3e-2 * np.abs(y32).max()
