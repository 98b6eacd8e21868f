"""ResNeXt and MobileNetV2 backbones without torch: shapes, widths, frozen
stages, config checks; the Detectron pickle reader refuses code."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fcos_jax.convert import imagenet
from fcos_jax.model import config as config_lib
from fcos_jax.model.backbones import build_backbone, c3_c5_channels
from fcos_jax.model.fcos import init_variables
from fcos_jax.core.locations import level_sizes
from fcos_jax.train.param_groups import param_labels

SMALL_HEAD = dict(fpn_channels=32, gn_groups=8, head_convs=1)
MNV2 = config_lib.official(backbone="mobilenet_v2", bn_eps=1e-5, **SMALL_HEAD)


def backbone_shapes(cfg):
  v = jax.eval_shape(lambda r: init_variables(cfg, r), jax.random.key(0))
  return {"/".join(p): s.shape for p, s in
          traverse_util.flatten_dict(v["params"]["backbone"]).items()}


@pytest.mark.parametrize("groups, per_group, width", [(32, 8, 256), (64, 4, 256)])
def test_resnext_101_widths_match_the_published_layout(groups, per_group, width):
  """X-101-32x8d and 64x4d: res2's 3x3 is `width` wide in `groups` groups,
  doubling per stage; the stage outputs stay ResNet's 256..2048."""
  shapes = backbone_shapes(config_lib.official(
      depth=101, groups=groups, width_per_group=per_group, **SMALL_HEAD))
  for k in range(4):
    w = width * 2 ** k
    assert shapes[f"res{k + 2}/block1/conv1/kernel"] == (1, 1, 256 * 2 ** k, w)
    assert shapes[f"res{k + 2}/block1/conv2/kernel"] == (3, 3, w // groups, w)
    assert shapes[f"res{k + 2}/block1/conv3/kernel"] == (1, 1, w, 256 * 2 ** k)
  assert sum(1 for p in shapes if p.startswith("res4/") and
             p.endswith("conv2/kernel")) == 23


def backbone_params(cfg, hw=(32, 32)):
  x = jnp.zeros((1, *hw, 3), jnp.float32)
  return jax.jit(build_backbone(cfg).init)(jax.random.key(0), x)["params"]


def test_mobilenet_v2_taps_and_strides():
  cfg = MNV2
  hw = (65, 97)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, *hw, 3)), jnp.float32)
  feats = jax.jit(build_backbone(cfg).apply)(
      {"params": backbone_params(cfg)}, x)
  assert c3_c5_channels(cfg) == (32, 96, 320)
  assert [f.shape[1:3] for f in feats] == list(level_sizes(hw, cfg.strides)[:3])
  assert [f.shape[-1] for f in feats] == [32, 96, 320]
  shapes = backbone_shapes(cfg)
  assert shapes["stem/conv/kernel"] == (3, 3, 3, 32)
  assert shapes["block1/dw_conv/kernel"] == (3, 3, 1, 32)  # Depthwise.
  assert "block1/expand_conv/kernel" not in shapes  # Expansion 1.
  assert shapes["block17/expand_conv/kernel"] == (1, 1, 160, 960)
  assert shapes["block17/project_conv/kernel"] == (1, 1, 960, 320)
  assert not any(p.startswith("block18") for p in shapes)


def test_mobilenet_v2_freeze_at_stops_gradients_and_labels():
  """freeze_at=3: the stem and blocks 1-2 (features 0-2) get no gradient
  and the "frozen" label; block 3 trains."""
  cfg = MNV2.replace(freeze_at=3)
  params = backbone_params(cfg)
  model = build_backbone(cfg)
  x = jnp.ones((1, 32, 32, 3), jnp.float32)
  grads = jax.jit(jax.grad(lambda p: sum(jnp.sum(f) for f in model.apply(
      {"params": p}, x))))(params)
  norm = lambda name: float(jnp.abs(grads[name]["dw_conv"]["kernel"]
                                    if name != "stem" else
                                    grads[name]["conv"]["kernel"]).sum())
  assert norm("stem") == norm("block1") == norm("block2") == 0.0
  assert norm("block3") > 0
  full = jax.eval_shape(lambda r: init_variables(cfg, r), jax.random.key(0))
  labels = param_labels(full["params"], cfg)["backbone"]
  assert labels["block2"]["dw_conv"]["kernel"] == "frozen"
  assert labels["block3"]["dw_conv"]["kernel"] == "weight"
  assert labels["block3"]["dw_bn"]["scale"] == "frozen"  # Frozen BN.


def test_config_checks():
  with pytest.raises(ValueError, match="backbone="):
    config_lib.official(backbone="vgg")
  with pytest.raises(ValueError, match="groups=32 .ResNeXt. needs"):
    config_lib.official(depth=18, groups=32)
  with pytest.raises(ValueError, match="groups=32 .ResNeXt. needs"):
    config_lib.official(backbone="mobilenet_v2", groups=32)
  with pytest.raises(ValueError, match="leaves the bottleneck no channels"):
    config_lib.official(width=8, groups=32, width_per_group=4)


def test_mobilenet_v2_official_names():
  """The official FCOS MNV2 body (Sequential conv, bn, relu6, ... flat)."""
  name = imagenet.mobilenet_v2_module_name
  assert name(("block1", "project_bn"), "official") == "features.1.conv.4"
  assert name(("block2", "expand_conv"), "official") == "features.2.conv.0"
  assert name(("block2", "dw_bn"), "official") == "features.2.conv.4"
  assert name(("block2", "project_conv"), "official") == "features.2.conv.6"
  assert name(("block2", "project_conv"), "torchvision") == "features.2.conv.2"
  assert name(("stem", "bn"), "torchvision") == "features.0.1"


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_detectron_pickle_that_runs_code_is_refused(tmp_path):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps(
      {"blobs": {"conv1_w": np.zeros(3), "x": _RunsCode(marker)}}, protocol=2))
  with pytest.raises(pickle.UnpicklingError,
                     match=r"evil.pkl: refused to load posix\.system"):
    imagenet.load_detectron_pickle(str(path))
  assert not marker.exists()
  path.write_bytes(pickle.dumps({"blobs": {"a": eval}}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match=r"builtin__\.eval"):
    imagenet.load_detectron_pickle(str(path))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron_pickle_arrays_load(tmp_path, protocol):
  """Arrays under "blobs" load with every protocol, and with the numpy 1.x
  module names (Detectron's pickles were written by numpy 1)."""
  blobs = {"conv1_w": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3),
           "res_conv1_bn_s": np.float32([1.5, 2.0]), "lr": np.float64(0.1)}
  data = pickle.dumps({"blobs": blobs}, protocol=protocol)
  if protocol == 2:
    data = data.replace(b"cnumpy._core.multiarray\n",
                        b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in data
  path = tmp_path / "w.pkl"
  path.write_bytes(data)
  with pytest.raises(ValueError, match=r"not numeric arrays: \['lr'\]"):
    imagenet.load_detectron_pickle(str(path))
  del blobs["lr"]
  path.write_bytes(pickle.dumps(blobs, protocol=protocol))  # No "blobs" key.
  got = imagenet.load_detectron_pickle(str(path))
  assert sorted(got) == sorted(blobs)
  for k, v in blobs.items():
    np.testing.assert_array_equal(got[k], v)


def test_train_starts_from_a_detectron_pickle(tmp_path):
  """config.init_backbone_format="detectron_pkl": the backbone is the
  pickle's (OIHW -> HWIO, folded BN as mean 0 / variance 1), the rest is
  the fresh initialisation."""
  from fcos_jax.train.initial_weights import load_initial_params
  cfg = config_lib.official(depth=50, width=8, **SMALL_HEAD)
  rng = np.random.default_rng(0)
  shapes = backbone_shapes(cfg)
  blobs = {}
  for name, (path, shape) in imagenet.detectron_blob_names(cfg).items():
    oihw = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
    blobs[name] = rng.normal(size=oihw).astype(np.float32)
  blobs["fc1000_w"] = np.zeros((1000, 256), np.float32)
  assert len(blobs) - 1 == sum(1 for p in shapes if not p.endswith(("mean", "var")))
  file = tmp_path / "R-50.pkl"
  file.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
  params = init_variables(cfg, jax.random.key(0))["params"]
  got = load_initial_params(params, str(file), "detectron_pkl", cfg)
  bb = got["backbone"]
  np.testing.assert_array_equal(bb["res3"]["block0"]["conv2"]["kernel"],
                                blobs["res3_0_branch2b_w"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(bb["res5"]["block0"]["downsample_bn"]["scale"],
                                blobs["res5_0_branch1_bn_s"])
  np.testing.assert_array_equal(bb["stem"]["bn"]["bias"], blobs["res_conv1_bn_b"])
  np.testing.assert_array_equal(bb["res2"]["block2"]["bn3"]["var"], np.ones(32))
  np.testing.assert_array_equal(bb["res2"]["block2"]["bn3"]["mean"], np.zeros(32))
  np.testing.assert_array_equal(got["head"]["cls_logits"]["bias"],
                                params["head"]["cls_logits"]["bias"])


@pytest.mark.slow
def test_mobilenet_v2_fcos_train_step():
  """One official SGD step of an MNV2 FCOS (freeze_at=2): finite loss,
  trained kernels move, the frozen stem and block 1 and every frozen BN
  stay as they were."""
  import functools
  from batches import one_train_step
  params, new, metrics = one_train_step(MNV2.replace(freeze_at=2,
                                                     num_classes=3))
  assert np.isfinite(float(metrics["loss"]))
  old_bb, new_bb = params["backbone"], new.params["backbone"]
  same = lambda *p: np.array_equal(
      np.asarray(functools.reduce(lambda t, k: t[k], p, old_bb)),
      np.asarray(functools.reduce(lambda t, k: t[k], p, new_bb)))
  assert same("stem", "conv", "kernel") and same("block1", "dw_conv", "kernel")
  assert not same("block2", "dw_conv", "kernel")
  assert not same("block17", "project_conv", "kernel")
  assert same("block17", "project_bn", "scale") and same("block9", "dw_bn", "var")
