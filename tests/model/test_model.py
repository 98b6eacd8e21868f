"""FCOS model: shapes, level order, freezing, init, bfloat16, preprocessing,
optimizer labels. Tiny widths keep it fast; shape checks use eval_shape."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from fcos_jax.model import config as config_lib
from fcos_jax.model.fcos import FCOS, init_variables
from fcos_jax.model.fpn import upsample_to
from fcos_jax.core.locations import compute_locations
from fcos_jax.train.param_groups import param_labels
from fcos_jax.model.preprocess import normalize_images


def tiny(**kw):
  base = dict(depth=18, width=8, fpn_channels=16, gn_groups=4, head_convs=2,
              num_classes=3)
  base.update(kw)
  return config_lib.official(**base)


def shapes_of(cfg, canvas_hw, batch=2):
  """(outputs, level outputs, variables) as ShapeDtypeStructs: no compute."""
  def fn(x):
    model = FCOS(cfg)
    (out, levels), v = model.init_with_output(
        jax.random.key(0), x,
        method=lambda m, x: (m(x), m.level_outputs(x)))
    return out, levels, v
  return jax.eval_shape(fn, jnp.zeros((batch, *canvas_hw, 3)))


@functools.partial(jax.jit, static_argnums=0)
def forward(cfg, variables, x):
  """(outputs, level outputs); one compile per (cfg, shape) for the file."""
  return FCOS(cfg).apply(variables, x,
                         method=lambda m, x: (m(x), m.level_outputs(x)))


@pytest.fixture(scope="module")
def tiny_setup():
  cfg = tiny()
  return cfg, init_variables(cfg, jax.random.key(1))


def random_images(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_output_shapes_every_depth(depth):
  cfg = tiny(depth=depth)
  out, _, _ = shapes_of(cfg, (75, 99))
  p = compute_locations((75, 99), cfg).num_locations
  assert out.cls_logits.shape == (2, p, 3)
  assert out.box_regression.shape == (2, p, 4)
  assert out.centerness.shape == (2, p)
  assert all(o.dtype == jnp.float32 for o in jax.tree.leaves(out))


@pytest.mark.parametrize("canvas_hw", [(64, 64), (97, 131), (320, 417),
                                       (33, 17)])
def test_level_sizes_match_locations(canvas_hw):
  cfg = tiny()
  out, levels, _ = shapes_of(cfg, canvas_hw, batch=1)
  locs = compute_locations(canvas_hw, cfg)
  assert [lv[0].shape[1:3] for lv in levels] == list(locs.level_sizes)
  assert out.cls_logits.shape[1] == locs.num_locations


def test_parameters_do_not_depend_on_canvas():
  cfg = tiny(depth=50)
  shape = lambda v: jax.tree.map(lambda a: a.shape, v)
  assert shape(shapes_of(cfg, (64, 64))[2]) == shape(shapes_of(cfg, (97, 33))[2])


def test_paper_preset_exp_regression_and_p6_from_c5():
  cfg = config_lib.paper(depth=18, width=8, fpn_channels=16, gn_groups=4,
                         head_convs=1, num_classes=2)
  _, _, v = shapes_of(cfg, (64, 64))
  # P6 reads C5 (8 * 8 channels for ResNet-18 width 8), not P5 (16).
  assert v["params"]["fpn"]["p6"]["kernel"].shape == (3, 3, 64, 16)
  tv = config_lib.torchvision(depth=18, width=8, fpn_channels=16, gn_groups=4,
                              head_convs=1, num_classes=2)
  _, _, v = shapes_of(tv, (64, 64))
  assert v["params"]["fpn"]["p6"]["kernel"].shape == (3, 3, 16, 16)
  assert not any(k.startswith("scale_") for k in v["params"]["head"])


def test_level_order_and_values_match_locations(tiny_setup):
  """Output row p equals level l's map at the cell of locations.points[p]."""
  cfg, v = tiny_setup
  canvas = (75, 99)
  x = random_images((2, *canvas, 3))
  out, levels = jax.device_get(forward(cfg, v, x))
  locs = compute_locations(canvas, cfg)
  for p in range(locs.num_locations):
    s = int(locs.strides[p])
    l = cfg.strides.index(s)
    px, py = locs.points[p]
    i, j = int((py - s // 2) // s), int((px - s // 2) // s)
    np.testing.assert_array_equal(out.cls_logits[:, p], levels[l][0][:, i, j])
    np.testing.assert_array_equal(out.box_regression[:, p],
                                  levels[l][1][:, i, j])
    np.testing.assert_array_equal(out.centerness[:, p], levels[l][2][:, i, j])
  # Relu regression (norm_reg_targets) is non-negative; outputs vary.
  assert out.box_regression.min() >= 0
  assert np.std(out.cls_logits) > 0


def test_frozen_parameters_get_zero_gradient(tiny_setup):
  # Res3 frozen: C3 feeds the FPN, so its output needs the stop too.
  cfg = tiny_setup[0].replace(freeze_at=3)
  v = tiny_setup[1]
  # Random BN statistics so the frozen vectors matter to the output.
  rng = np.random.default_rng(0)
  flat = traverse_util.flatten_dict(v["params"])
  for path, a in flat.items():
    if path[0] == "backbone" and path[-1] != "kernel":
      lo = 0.5 if path[-1] in ("scale", "var") else -0.1
      flat[path] = jnp.asarray(rng.uniform(lo, lo + 1.0 if lo > 0 else 0.1,
                                           a.shape), jnp.float32)
  params = traverse_util.unflatten_dict(flat)
  x = random_images((1, 75, 99, 3))

  def loss(params):
    out = FCOS(cfg).apply({"params": params}, x)
    return (jnp.sum(out.cls_logits ** 2) + jnp.sum(out.box_regression)
            + jnp.sum(out.centerness ** 2))

  grads = traverse_util.flatten_dict(jax.jit(jax.grad(loss))(params))
  labels = traverse_util.flatten_dict(param_labels(params, cfg))
  for path, g in grads.items():
    norm = float(jnp.abs(g).max())
    if labels[path] == "frozen":
      assert norm == 0.0, path
    elif path[0] == "backbone" or path[-2].endswith("tower_0"):
      assert norm > 0.0, path
  n_frozen_kernels = sum(1 for p in labels if labels[p] == "frozen"
                         and p[-1] == "kernel")
  # ResNet-18: stem 1 conv; res2 4 convs; res3 4 convs + 1 projection.
  assert n_frozen_kernels == 10


def test_head_and_fpn_init(tiny_setup):
  cfg, v = tiny_setup
  head, fpn, bb = (v["params"][k] for k in ("head", "fpn", "backbone"))
  np.testing.assert_allclose(head["cls_logits"]["bias"],
                             np.full(3, -math.log(0.99 / 0.01)), rtol=1e-6)
  for l in range(5):
    assert float(head[f"scale_{l}"]) == 1.0 and head[f"scale_{l}"].shape == ()
  for name in ("cls_tower_0", "box_tower_1", "box_regression", "centerness"):
    assert np.all(head[name]["bias"] == 0)
  tower = np.asarray(head["cls_tower_0"]["kernel"])  # 3*3*16*16 samples.
  assert abs(tower.std() - 0.01) < 0.001 and abs(tower.mean()) < 0.001
  assert np.all(head["cls_norm_0"]["scale"] == 1)
  # FPN: kaiming_uniform(a=1): U(-b, b), b = sqrt(3 / fan_in), bias 0.
  k = np.asarray(fpn["output3"]["kernel"])
  bound = math.sqrt(3 / (3 * 3 * 16))
  assert np.abs(k).max() <= bound and abs(k.std() - bound / math.sqrt(3)) < 0.1 * bound
  assert np.all(fpn["p7"]["bias"] == 0)
  bn = bb["res3"]["block0"]["bn1"]
  assert np.all(bn["scale"] == 1) and np.all(bn["var"] == 1)
  assert np.all(bn["mean"] == 0) and np.all(bn["bias"] == 0)


def test_bfloat16_close_to_float32(tiny_setup):
  cfg, v = tiny_setup
  x = random_images((2, 75, 99, 3), seed=3)
  f32 = forward(cfg, v, x)[0]
  b16 = forward(cfg.replace(dtype="bfloat16"), v, x)[0]
  for key in ("cls_logits", "box_regression", "centerness"):
    got, want = getattr(b16, key), getattr(f32, key)
    assert got.dtype == jnp.float32
    scale = float(jnp.abs(want).max())
    err = float(jnp.abs(got - want).max())
    assert err <= 0.03 * scale, (key, err, scale)


def test_exp_regression_positive(tiny_setup):
  cfg = tiny_setup[0].replace(norm_reg_targets=False, head_norm="none",
                              centerness_on="cls")
  # Same parameters without the GroupNorms.
  head = {k: p for k, p in tiny_setup[1]["params"]["head"].items()
          if "_norm_" not in k}
  v = {"params": dict(tiny_setup[1]["params"], head=head)}
  out = forward(cfg, v, random_images((2, 75, 99, 3)))[0]
  reg = np.asarray(out.box_regression)
  # exp(scale * x) with x ~ 0 at init: close to 1 pixel, always > 0.
  assert reg.min() > 0 and abs(np.median(reg) - 1) < 0.2


@pytest.mark.parametrize("preset", ["official", "torchvision"])
def test_normalize_images_against_numpy(preset):
  cfg = config_lib.PRESETS[preset]()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
  image_hw = np.array([[20, 24], [13, 24], [7, 5]], np.int32)
  got = np.asarray(jax.jit(normalize_images, static_argnums=2)(
      images, image_hw, cfg))
  want = np.zeros(images.shape, np.float64)
  for b, (h, w) in enumerate(image_hw):
    region = images[b, :h, :w].astype(np.float64)
    if preset == "official":  # BGR in 0..255, caffe mean, std 1.
      region = region[..., [2, 1, 0]] - [102.9801, 115.9465, 122.7717]
    else:  # RGB in 0..1, ImageNet mean/std.
      region = (region / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    want[b, :h, :w] = region
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert np.all(got[1, 13:] == 0) and np.all(got[2, :, 5:] == 0)


def test_param_labels():
  cfg = tiny(depth=50, freeze_at=2)
  _, _, v = shapes_of(cfg, (64, 64))
  params = v["params"]
  labels = param_labels(params, cfg)
  assert jax.tree.structure(labels) == jax.tree.structure(params)
  flat = traverse_util.flatten_dict(labels, sep="/")
  expected = {
      "backbone/stem/conv/kernel": "frozen",
      "backbone/stem/bn/scale": "frozen",
      "backbone/res2/block0/conv2/kernel": "frozen",
      "backbone/res2/block0/downsample_conv/kernel": "frozen",
      "backbone/res3/block0/conv1/kernel": "weight",
      "backbone/res3/block0/bn1/scale": "frozen",
      "backbone/res3/block0/bn1/bias": "frozen",
      "backbone/res5/block2/bn3/var": "frozen",
      "backbone/res5/block0/downsample_conv/kernel": "weight",
      "fpn/lateral3/kernel": "weight",
      "fpn/lateral3/bias": "bias",
      "fpn/p7/bias": "bias",
      "head/cls_tower_0/kernel": "weight",
      "head/cls_tower_0/bias": "bias",
      "head/box_norm_1/scale": "norm",
      "head/box_norm_1/bias": "bias",
      "head/cls_logits/bias": "bias",
      "head/scale_4": "weight",
  }
  for path, label in expected.items():
    assert flat[path] == label, path
  # Every backbone vector is frozen; kernels of res3-res5 (3+4+6+3-3 blocks
  # of 3 convs, plus 3 projections) are trained.
  backbone_weights = [p for p, l in flat.items() if p.startswith("backbone")
                      and l == "weight"]
  assert len(backbone_weights) == 13 * 3 + 3
  assert set(flat.values()) == {"frozen", "bias", "norm", "weight"}
  unfrozen = traverse_util.flatten_dict(param_labels(params, cfg.replace(
      freeze_at=0)), sep="/")
  assert unfrozen["backbone/stem/conv/kernel"] == "weight"
  assert unfrozen["backbone/stem/bn/mean"] == "frozen"
  # The labels drive optax.multi_transform directly.
  tx = optax.multi_transform(
      {"frozen": optax.set_to_zero(), "bias": optax.sgd(0.02),
       "norm": optax.sgd(0.01), "weight": optax.sgd(0.01)}, labels)
  tx.init(jax.tree.map(lambda s: jnp.zeros(s.shape), params))


def test_bad_config_is_refused():
  with pytest.raises(ValueError, match="strides"):
    init_variables(tiny(strides=(8, 16, 32, 64, 256)), jax.random.key(0))


def test_fpn_upsample_matches_pytorch_nearest_rule():
  # PyTorch nearest with size=(H, W) reads source row floor(i * h / H).
  x = np.arange(3 * 4, dtype=np.float32).reshape(1, 3, 4, 1)
  for hw in [(6, 8), (5, 7), (6, 7), (5, 8)]:
    rows = np.floor(np.arange(hw[0]) * 3 / hw[0]).astype(int)
    cols = np.floor(np.arange(hw[1]) * 4 / hw[1]).astype(int)
    want = x[:, rows][:, :, cols]
    np.testing.assert_array_equal(np.asarray(upsample_to(x, hw)), want)


def test_groupnorm_backbone_trains_every_norm_parameter():
  """backbone_norm="gn": trainable GroupNorm, labelled norm/bias, with grads."""
  import jax
  import jax.numpy as jnp
  from fcos_jax.model import FCOS, init_variables
  from fcos_jax.train.param_groups import param_labels
  from fcos_jax.model.config import official
  from flax import traverse_util
  cfg = official(num_classes=3, depth=18, width=8, fpn_channels=16,
                 gn_groups=4, head_convs=1, freeze_at=0, backbone_norm="gn")
  params = init_variables(cfg, jax.random.key(0), (64, 64))["params"]
  labels = traverse_util.flatten_dict(param_labels(params, cfg))
  bb = {p: l for p, l in labels.items() if p[0] == "backbone"}
  assert "frozen" not in bb.values()
  assert {l for p, l in bb.items() if p[-1] == "scale"} == {"norm"}
  images = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
  grads = jax.grad(lambda p: sum(
      jnp.sum(v ** 2) for v in jax.tree.leaves(FCOS(cfg).apply({"params": p}, images)))
                   )(params)
  flat = traverse_util.flatten_dict(grads)
  stem_scale = flat[("backbone", "stem", "bn", "gn", "scale")]
  assert float(jnp.abs(stem_scale).sum()) > 0
