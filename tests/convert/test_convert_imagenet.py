"""ImageNet backbone converters against independent references on the same
input: torchvision's own ResNeXt and MobileNetV2 modules, and for the
Detectron pickles torchvision's ResNet / ResNeXt restated in the caffe
layout (stride moved to the 1x1 for MSRA ResNets, FrozenBatchNorm2d with no
epsilon), loaded from the pickle by maskrcnn-benchmark's renaming rules."""

import pickle
import re

import jax
import numpy as np
import pytest

from fcos_jax.convert import imagenet
from fcos_jax.convert import torchvision as tv_convert
from fcos_jax.model import config as config_lib
from fcos_jax.model.backbones import build_backbone
from fcos_jax.model.mobilenet_v2 import TAPS

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.torch


@pytest.fixture(autouse=True)
def float32_convolutions():
  with jax.default_matmul_precision("highest"):
    yield


def tv_backbone_cfg(arch):
  return config_lib.torchvision(num_classes=5,
                                **imagenet.TORCHVISION_ARCHS[arch])


def caffe_cfg(**fields):
  return config_lib.official(num_classes=5, **fields)


def randomise_norms(model, seed):
  """Random BN statistics and affine (torchvision initialises them to
  0 / 1, which would hide a swapped mean / variance)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (torch.nn.BatchNorm2d,
                        torchvision.ops.misc.FrozenBatchNorm2d)):
        m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        if isinstance(m, torch.nn.BatchNorm2d):
          m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
          m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
  return model.eval()


def ours(cfg, backbone_params, x):
  return [np.asarray(f) for f in jax.jit(build_backbone(cfg).apply)(
      {"params": backbone_params}, x)]


def resnet_taps(model, x_nhwc):
  """C3, C4, C5 of a torchvision ResNet, NHWC."""
  with torch.no_grad():
    y = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    y = model.maxpool(model.relu(model.bn1(model.conv1(y))))
    outs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
      y = layer(y)
      outs.append(y.permute(0, 2, 3, 1).numpy())
  return outs[1:]


def assert_close(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    assert g.shape == w.shape
    scale = np.abs(w).max()
    assert scale > 0.1
    assert np.abs(g - w).max() <= 1e-4 * scale


def batch(hw, seed):
  return np.random.default_rng(seed).normal(size=(1, *hw, 3)).astype(np.float32)


@pytest.mark.parametrize("arch, hw", [
    ("resnext50_32x4d", (97, 129)),
    pytest.param("resnext101_32x8d", (64, 64), marks=pytest.mark.slow),
    pytest.param("resnext101_64x4d", (64, 64), marks=pytest.mark.slow)])
def test_torchvision_resnext_matches(arch, hw):
  torch.manual_seed(0)
  model = randomise_norms(getattr(torchvision.models, arch)(weights=None), 0)
  cfg = tv_backbone_cfg(arch)
  params = imagenet.convert_torchvision_backbone(model.state_dict(), cfg)
  x = batch(hw, 1)
  assert_close(ours(cfg, params, x), resnet_taps(model, x))


def test_torchvision_mobilenet_v2_matches(tmp_path):
  torch.manual_seed(0)
  model = randomise_norms(torchvision.models.mobilenet_v2(weights=None), 0)
  cfg = tv_backbone_cfg("mobilenet_v2")
  path = tmp_path / "mnv2.pth"
  torch.save(model.state_dict(), path)  # The .pth route.
  params = imagenet.convert_torchvision_backbone(str(path), cfg)
  x = batch((97, 129), 2)
  want, y = [], torch.from_numpy(x).permute(0, 3, 1, 2)
  with torch.no_grad():
    for i, layer in enumerate(model.features[:18]):
      y = layer(y)
      if i in TAPS:
        want.append(y.permute(0, 2, 3, 1).numpy())
  assert_close(ours(cfg, params, x), want)


def test_torchvision_mobilenet_v2_refusals():
  sd = torchvision.models.mobilenet_v2(weights=None).state_dict()
  cfg = tv_backbone_cfg("mobilenet_v2")
  bad = dict(sd)
  del bad["features.3.conv.1.0.weight"]
  bad["features.4.extra.weight"] = torch.zeros(1)
  bad["features.17.conv.2.weight"] = torch.zeros(320, 960, 3, 3)
  with pytest.raises(ValueError) as err:
    imagenet.convert_mobilenet_v2_state_dict(bad, cfg)
  msg = str(err.value)
  assert "1 missing: features.3.conv.1.0.weight" in msg
  assert "1 unexpected: features.4.extra.weight" in msg
  assert ("features.17.conv.2.weight: got (320, 960, 3, 3), expected "
          "(320, 960, 1, 1)") in msg
  with pytest.raises(ValueError, match=r"bn_eps=0.0 \(needs 1e-05\)"):
    imagenet.convert_mobilenet_v2_state_dict(sd, cfg.replace(bn_eps=0.0))
  with pytest.raises(ValueError, match=r"backbone='mobilenet_v2' \(needs 'resnet'\)"):
    tv_convert.convert_resnet_state_dict(sd, cfg)


# ------------------------------------------------------ Detectron pickles

def caffe2_blob_name(torch_name):
  """torchvision ResNet name -> Detectron blob name: the inverse of
  maskrcnn-benchmark's C2 renaming (res{k} = layer{k-1}, branch2a/b/c =
  conv1/2/3, branch1 = downsample, _w / _bn_s / _bn_b)."""
  name = {"conv1.weight": "conv1_w", "bn1.weight": "res_conv1_bn_s",
          "bn1.bias": "res_conv1_bn_b"}.get(torch_name)
  if name:
    return name
  m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\."
                   r"(weight|bias)", torch_name)
  stage, block, module, leaf = m.groups()
  branch = {"conv1": "branch2a", "bn1": "branch2a_bn", "conv2": "branch2b",
            "bn2": "branch2b_bn", "conv3": "branch2c", "bn3": "branch2c_bn",
            "downsample.0": "branch1", "downsample.1": "branch1_bn"}[module]
  suffix = "w" if leaf == "weight" and "bn" not in branch else (
      "s" if leaf == "weight" else "b")
  return f"res{int(stage) + 1}_{block}_{branch}_{suffix}"


def caffe_reference(arch, stride_in_1x1, seed):
  """torchvision `arch` with no-epsilon FrozenBatchNorm2d (statistics 0 /
  1: the pickles fold BN into an affine), strides moved to the 1x1 when
  `stride_in_1x1`, random weights; and its Detectron pickle blobs."""
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(
      weights=None, norm_layer=lambda c: torchvision.ops.misc.FrozenBatchNorm2d(c, eps=0.0))
  randomise_norms(model, seed)
  if stride_in_1x1:
    for layer in (model.layer2, model.layer3, model.layer4):
      layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
  blobs = {caffe2_blob_name(k): v.numpy().copy()
           for k, v in model.state_dict().items()
           if not k.startswith("fc.") and "running_" not in k}
  blobs["fc1000_w"] = np.zeros((1000, 2048), np.float32)  # Ignored extras.
  blobs["fc1000_b"] = np.zeros(1000, np.float32)
  blobs["conv1_w_momentum"] = np.zeros_like(blobs["conv1_w"])
  return model, blobs


@pytest.mark.parametrize("arch, fields, hw", [
    ("resnet50", dict(depth=50), (97, 129)),
    ("resnext50_32x4d", dict(depth=50, groups=32, width_per_group=4,
                             stride_in_1x1=False), (64, 96))])
def test_detectron_pickle_matches_caffe_resnet(tmp_path, arch, fields, hw):
  cfg = caffe_cfg(**fields)
  model, blobs = caffe_reference(arch, cfg.stride_in_1x1, 5)
  path = tmp_path / "R.pkl"
  path.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
  params = imagenet.convert_detectron_pickle(str(path), cfg)
  x = batch(hw, 6) * 50.0  # Caffe input scale (0..255 minus the mean).
  assert_close(ours(cfg, params, x), resnet_taps(model, x))


def test_detectron_pickle_refusals(tmp_path):
  cfg = caffe_cfg(depth=50)
  _, blobs = caffe_reference("resnet50", True, 7)
  bad = dict(blobs)
  del bad["res3_2_branch2b_bn_s"]
  bad["res6_0_branch2a_w"] = np.zeros(1, np.float32)
  bad["res4_0_branch1_w"] = np.zeros((1024, 512, 3, 3), np.float32)
  with pytest.raises(ValueError) as err:
    imagenet.convert_detectron_pickle(bad, cfg)
  msg = str(err.value)
  assert "1 missing: res3_2_branch2b_bn_s" in msg
  assert "1 unexpected: res6_0_branch2a_w" in msg
  assert ("res4_0_branch1_w: got (1024, 512, 3, 3), expected "
          "(1024, 512, 1, 1)") in msg
  # An R-101 config: 17 more res4 blocks of 9 blobs each.
  with pytest.raises(ValueError, match=r"153 missing: res4_10_branch2a_bn_b"):
    imagenet.convert_detectron_pickle(blobs, cfg.replace(depth=101))
  with pytest.raises(ValueError, match=r"bn_eps=1e-05 \(needs 0.0\)"):
    imagenet.convert_detectron_pickle(blobs, cfg.replace(bn_eps=1e-5))
  with pytest.raises(ValueError, match=r"stride_in_1x1=True \(needs False\)"):
    imagenet.convert_detectron_pickle(
        blobs, cfg.replace(groups=32, width_per_group=8))


def official_mnv2_name(torchvision_name):
  """torchvision mobilenet_v2 name -> the official FCOS / tonylins name:
  their blocks are flat Sequentials (conv, bn, relu6, ...), torchvision's
  nest conv + bn + relu6 in Conv2dNormActivation."""
  m = re.fullmatch(r"features\.(\d+)\.conv\.(.+)\.(\w+)", torchvision_name)
  if not m:
    return torchvision_name  # features.0.{0,1}.* and features.18 agree.
  block, index, leaf = m.groups()
  expands = block != "1"
  flat = ({"0.0": 0, "0.1": 1, "1.0": 3, "1.1": 4, "2": 6, "3": 7} if expands
          else {"0.0": 0, "0.1": 1, "1": 3, "2": 4})[index]
  return f"features.{block}.conv.{flat}.{leaf}"


def test_official_layout_mobilenet_v2_names():
  """The official MNV2 ImageNet weights (tonylins names) convert to the same
  parameters as the same tensors under torchvision's names."""
  torch.manual_seed(0)
  sd = randomise_norms(torchvision.models.mobilenet_v2(weights=None), 0
                       ).state_dict()
  cfg = tv_backbone_cfg("mobilenet_v2")
  want = imagenet.convert_mobilenet_v2_state_dict(sd, cfg)
  official = {official_mnv2_name(k): v for k, v in sd.items()}
  assert "features.17.conv.7.running_var" in official
  caffe_input = cfg.replace(input_bgr=True, input_range=255.0,
                            pixel_mean=config_lib.CAFFE_BGR_MEAN,
                            pixel_std=(1.0, 1.0, 1.0))
  got = imagenet.convert_mobilenet_v2_state_dict(official, caffe_input,
                                                 layout="official")
  jax.tree.map(np.testing.assert_array_equal, got, want)
  with pytest.raises(ValueError, match="233 missing: features.1.conv.0.weight"):
    imagenet.convert_mobilenet_v2_state_dict(sd, cfg, layout="official")


# ----------------------------------------- Deformable backbones (dcn_stages)

def test_imagenet_start_of_a_deformable_backbone(tmp_path):
  """A model with deformable conv2s in res3-res5 starts from the plain
  ImageNet checkpoints: each conv2's kernel is the checkpoint's, its offset
  conv (absent there) keeps the model's initial values. With zero offsets
  and no mask (DCN v1) the backbone then computes the plain ResNet."""
  from fcos_jax.model.fcos import init_variables
  from fcos_jax.train.initial_weights import load_initial_params
  torch.manual_seed(0)
  model = randomise_norms(torchvision.models.resnet50(weights=None), 0)
  pth = tmp_path / "resnet50.pth"
  torch.save(model.state_dict(), pth)
  x = batch((64, 96), 2)
  for modulated in (False, True):
    cfg = tv_backbone_cfg("resnet50").replace(dcn_stages=(3, 4, 5),
                                              dcn_modulated=modulated)
    init = init_variables(cfg, jax.random.key(0))["params"]
    params = load_initial_params(init, str(pth), "torchvision_resnet", cfg)
    block = params["backbone"]["res4"]["block2"]["conv2"]
    np.testing.assert_array_equal(
        block["conv"]["kernel"],
        model.layer3[2].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))
    for leaf in ("kernel", "bias"):
      np.testing.assert_array_equal(
          block["offset"][leaf],
          init["backbone"]["res4"]["block2"]["conv2"]["offset"][leaf])
    assert block["offset"]["kernel"].shape[-1] == (3 if modulated else 2) * 9
    if not modulated:
      zero_offsets = jax.tree_util.tree_map_with_path(
          lambda path, v: v * 0 if "offset" in jax.tree_util.keystr(path)
          else v, params["backbone"])
      assert_close(ours(cfg, zero_offsets, x), resnet_taps(model, x))

  # The official DCNv2 presets from MSRA's R-50.pkl.
  cfg = caffe_cfg(depth=50, dcn_stages=(3, 4, 5))
  _, blobs = caffe_reference("resnet50", True, 3)
  pkl = tmp_path / "R-50.pkl"
  pkl.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
  init = init_variables(cfg, jax.random.key(0))["params"]
  params = load_initial_params(init, str(pkl), "detectron_pkl", cfg)
  conv2 = params["backbone"]["res5"]["block0"]["conv2"]
  np.testing.assert_array_equal(
      conv2["conv"]["kernel"], blobs["res5_0_branch2b_w"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      conv2["offset"]["kernel"],
      init["backbone"]["res5"]["block0"]["conv2"]["offset"]["kernel"])
