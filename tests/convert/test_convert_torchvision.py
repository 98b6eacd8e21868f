"""torchvision -> fcos_jax converters: outputs match torchvision's FCOS and
ResNet on the same normalised input, and bad state dicts are refused."""

import copy
import functools

import jax
import numpy as np
import pytest

from fcos_jax.convert import torchvision as tv_convert
from fcos_jax.model import config as config_lib
from fcos_jax.model.fcos import FCOS
from fcos_jax.core.locations import compute_locations
from fcos_jax.model.resnet import ResNet

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.torch

NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def float32_convolutions():
  """Full float32 convs: on GPUs JAX's default precision lets them run in
  TF32 (about 1e-3 relative), which is not what parity is about."""
  with jax.default_matmul_precision("highest"):
    yield

CFG = config_lib.torchvision(num_classes=NUM_CLASSES)
OUTPUT_KEYS = (("cls_logits", "cls_logits"),
               ("box_regression", "bbox_regression"),
               ("centerness", "bbox_ctrness"))


def randomise_norms(model, seed):
  """Random BN statistics and affine, and GroupNorm affine, so the frozen
  statistics matter (torchvision initialises them to 0 / 1)."""
  g = torch.Generator().manual_seed(seed)
  u = lambda t, lo, hi: t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=g))
  n = lambda t, s: t.copy_(s * torch.randn(t.shape, generator=g))
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        u(m.weight, 0.5, 1.5), n(m.bias, 0.1)
        n(m.running_mean, 0.1), u(m.running_var, 0.5, 1.5)
      elif isinstance(m, torch.nn.GroupNorm):
        u(m.weight, 0.5, 1.5), n(m.bias, 0.1)
  return model.eval()


@functools.lru_cache(maxsize=None)
def tv_fcos(seed):
  torch.manual_seed(seed)
  model = torchvision.models.detection.fcos_resnet50_fpn(
      weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
  return randomise_norms(model, seed)


_apply = jax.jit(FCOS(CFG).apply)


def tv_head_outputs(model, x_nhwc):
  with torch.no_grad():
    features = list(model.backbone(torch.from_numpy(x_nhwc).permute(
        0, 3, 1, 2)).values())
    out = model.head(features)
  return {k: v.numpy() for k, v in out.items()}, features


def normalised_batch(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("batch_hw", [(2, 256, 384), (1, 257, 301)])
def test_fcos_outputs_match_torchvision(batch_hw, tmp_path):
  b, h, w = batch_hw
  locs = compute_locations((h, w), CFG)
  for seed in (0, 1):
    model = tv_fcos(seed)
    sd = model.state_dict()
    if seed == 1:  # Also the .npz route, for users without torch.
      path = tmp_path / "fcos.npz"
      np.savez(path, **{k: v.numpy() for k, v in sd.items()})
      sd = str(path)
    variables = tv_convert.convert_fcos_state_dict(sd, CFG)
    x = normalised_batch((b, h, w, 3), seed)
    ours = jax.device_get(_apply(variables, x))
    ref, features = tv_head_outputs(model, x)
    assert [tuple(f.shape[2:]) for f in features] == list(locs.level_sizes)
    for key, tv_key in OUTPUT_KEYS:
      want = ref[tv_key].reshape(getattr(ours, key).shape)
      scale = np.abs(want).max()
      assert scale > 0.1, key
      for level in range(5):
        sl = locs.level_slice(level)
        err = np.abs(getattr(ours, key)[:, sl] - want[:, sl]).max()
        assert err <= 1e-4 * scale, (seed, key, level, err, scale)


def test_resnet_backbone_matches_torchvision():
  torch.manual_seed(3)
  model = randomise_norms(torchvision.models.resnet50(weights=None), 3)
  backbone = tv_convert.convert_resnet_state_dict(model.state_dict(), CFG)
  x = normalised_batch((1, 161, 203, 3), 3)
  ours = jax.jit(ResNet(CFG).apply)({"params": backbone}, x)
  with torch.no_grad():
    y = torch.from_numpy(x).permute(0, 3, 1, 2)
    y = model.maxpool(model.relu(model.bn1(model.conv1(y))))
    refs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
      y = layer(y)
      refs.append(y.permute(0, 2, 3, 1).numpy())
  for got, want in zip(ours, refs[1:]):
    assert got.shape == want.shape
    scale = np.abs(want).max()
    assert np.abs(np.asarray(got) - want).max() <= 1e-4 * scale


def test_merge_backbone():
  torch.manual_seed(4)
  sd = torchvision.models.resnet50(weights=None).state_dict()
  backbone = tv_convert.convert_resnet_state_dict(sd, CFG)
  # Shapes stand in for a full initialisation (merge only checks shapes).
  shapes = jax.eval_shape(
      lambda r: FCOS(CFG).init(r, np.zeros((1, 64, 64, 3), np.float32)),
      jax.random.key(0))
  merged = tv_convert.merge_backbone(shapes, backbone)
  assert merged["params"]["backbone"] is backbone
  assert merged["params"]["head"] is shapes["params"]["head"]
  np.testing.assert_array_equal(
      merged["params"]["backbone"]["stem"]["conv"]["kernel"],
      sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
  small = jax.eval_shape(
      lambda r: FCOS(CFG.replace(width=8)).init(
          r, np.zeros((1, 64, 64, 3), np.float32)), jax.random.key(0))
  with pytest.raises(ValueError, match="shapes differ"):
    tv_convert.merge_backbone(small, backbone)


@pytest.fixture(scope="module")
def state_dict():
  return {k: v.clone() for k, v in tv_fcos(0).state_dict().items()}


def test_refuses_missing_extra_and_misshaped(state_dict):
  sd = dict(state_dict)
  del sd["head.regression_head.bbox_ctrness.bias"]
  sd["head.extra_conv.weight"] = torch.zeros(3)
  sd["backbone.fpn.layer_blocks.1.0.weight"] = torch.zeros(256, 256, 1, 1)
  with pytest.raises(ValueError) as err:
    tv_convert.convert_fcos_state_dict(sd, CFG)
  msg = str(err.value)
  assert "1 missing: head.regression_head.bbox_ctrness.bias" in msg
  assert "1 unexpected: head.extra_conv.weight" in msg
  assert ("backbone.fpn.layer_blocks.1.0.weight: got (256, 256, 1, 1), "
          "expected (256, 256, 3, 3)") in msg


def test_refuses_wrong_num_classes_and_incompatible_config(state_dict):
  with pytest.raises(ValueError, match=r"cls_logits.weight: got \(5, "):
    tv_convert.convert_fcos_state_dict(state_dict, CFG.replace(num_classes=7))
  with pytest.raises(ValueError, match=r"stride_in_1x1=True \(needs False\)"):
    tv_convert.convert_fcos_state_dict(
        state_dict, config_lib.official(num_classes=NUM_CLASSES))
  with pytest.raises(ValueError, match=r"use_scale=True"):
    tv_convert.convert_fcos_state_dict(state_dict, CFG.replace(use_scale=True))


def test_accepts_old_fpn_names_and_no_batch_counters(state_dict):
  """torchvision < 0.13 saved `inner_blocks.0.weight`; FrozenBatchNorm2d
  (pretrained weights) has no num_batches_tracked."""
  new = tv_convert.convert_fcos_state_dict(state_dict, CFG)
  old_sd = {k.replace("blocks.0.0.", "blocks.0.").replace(
      "blocks.1.0.", "blocks.1.").replace("blocks.2.0.", "blocks.2."): v
            for k, v in state_dict.items()
            if not k.endswith("num_batches_tracked")}
  assert "backbone.fpn.inner_blocks.2.weight" in old_sd
  old = tv_convert.convert_fcos_state_dict(old_sd, CFG)
  jax.tree.map(np.testing.assert_array_equal, old, new)


@pytest.mark.slow
@pytest.mark.parametrize("canvas", [(256, 384), (448, 640)])
def test_detections_match_torchvision_end_to_end(canvas):
  """Converted weights + our postprocess == torchvision FCOS in eval mode
  (backbone, head, anchors, postprocess_detections, transform.postprocess
  called on the same pre-normalised, zero-padded batch), on a canvas that
  is a multiple of 128 and on one that is not."""
  from torchvision.models.detection.image_list import ImageList
  from fcos_jax.core.postprocess import make_postprocess_fn

  thresh = 0.05  # Random heads score ~0.07: many candidates on every image.
  cfg = CFG.replace(score_thresh=thresh)
  model = copy.deepcopy(tv_fcos(0))
  model.score_thresh = thresh
  with torch.no_grad():  # Boxes of positive area: a random relu head gives
    # many zero distances, and IoU of empty boxes is 0/0 (NaN in torch).
    model.head.regression_head.bbox_reg.bias.fill_(1.5)
  # torchvision's AnchorGenerator takes the stride of a level as
  # canvas // cells, e.g. 448 // 4 = 112 for P7 of a 448-high canvas, so its
  # P6/P7 centres drift off j * 64 and j * 128 when the canvas is not a
  # multiple of 128; the preset's location_stride="canvas" does the same.
  assert cfg.location_stride == "canvas"
  image_hw = np.array([canvas, [200, 301]], np.int32)
  orig_hw = np.array([[384, 576], [301, 409]], np.int32)
  x = normalised_batch((2, *canvas, 3), 5)
  for b, (h, w) in enumerate(image_hw):
    x[b, h:] = 0
    x[b, :, w:] = 0

  variables = tv_convert.convert_fcos_state_dict(model.state_dict(), cfg)
  outs = _apply(variables, x)
  post = make_postprocess_fn(compute_locations(canvas, cfg), cfg)
  ours = jax.device_get(post(outs, image_hw, orig_hw))

  with torch.no_grad():
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    features = list(model.backbone(xt).values())
    head = model.head(features)
    images = ImageList(xt, [tuple(map(int, s)) for s in image_hw])
    anchors = model.anchor_generator(images, features)
    sizes = [f.shape[2] * f.shape[3] for f in features]
    dets = model.postprocess_detections(
        {k: list(v.split(sizes, dim=1)) for k, v in head.items()},
        [list(a.split(sizes)) for a in anchors], images.image_sizes)
    dets = model.transform.postprocess(
        dets, images.image_sizes, [tuple(map(int, s)) for s in orig_hw])

  for b, det in enumerate(dets):
    tv_boxes, tv_scores = det["boxes"].numpy(), det["scores"].numpy()
    tv_labels = det["labels"].numpy()
    n = int(ours["valid"][b].sum())
    assert len(tv_scores) >= 50 and n == len(tv_scores)
    cutoff = tv_scores.min()
    unmatched = []
    used = np.zeros(len(tv_scores), bool)
    for k in range(n):
      box, score = ours["boxes"][b, k], ours["scores"][b, k]
      ok = (~used & (tv_labels == ours["classes"][b, k])
            & (np.abs(tv_scores - score) <= 1e-4)
            & (np.abs(tv_boxes - box).max(axis=1) <= 1e-2))
      if ok.any():
        used[np.argmax(ok)] = True
      else:
        unmatched.append(score)
    # Only near-ties at the cut-off may differ.
    assert all(abs(s - cutoff) <= 1e-4 for s in unmatched), (b, unmatched)
    assert len(unmatched) <= 2
