"""Official FCOS (maskrcnn-benchmark layout) -> fcos_jax: every published
model's names and shapes, refusals, and outputs (C3-C5, head outputs per
level, detections) equal to a PyTorch restatement of the official
architecture (tests/official_fcos_torch.py) with random weights."""

import functools

import jax
import numpy as np
import pytest

from fcos_jax.convert import official
from fcos_jax.model.fcos import FCOS, init_variables
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.postprocess import make_postprocess_fn


@pytest.fixture(autouse=True)
def float32_convolutions():
  with jax.default_matmul_precision("highest"):
    yield


def test_published_r50_names_and_shapes():
  """A few names and shapes as the released FCOS_imprv_R_50_FPN_1x.pth and
  its dcnv2 sibling have them, and the total count."""
  names = lambda model: {
      k: official.official_shape(shape, path)
      for k, (path, shape) in official.state_dict_names(
          official.published_config(model)).items()}
  plain = names("FCOS_imprv_R_50_FPN_1x")
  expect = {
      "backbone.body.stem.conv1.weight": (64, 3, 7, 7),
      "backbone.body.stem.bn1.running_var": (64,),
      "backbone.body.layer1.0.downsample.0.weight": (256, 64, 1, 1),
      "backbone.body.layer1.0.downsample.1.weight": (256,),
      "backbone.body.layer4.2.conv3.weight": (2048, 512, 1, 1),
      "backbone.fpn.fpn_inner2.weight": (256, 512, 1, 1),
      "backbone.fpn.fpn_layer4.bias": (256,),
      "backbone.fpn.top_blocks.p6.weight": (256, 256, 3, 3),
      "rpn.head.cls_tower.9.weight": (256, 256, 3, 3),
      "rpn.head.bbox_tower.10.weight": (256,),
      "rpn.head.cls_logits.weight": (80, 256, 3, 3),
      "rpn.head.bbox_pred.bias": (4,),
      "rpn.head.centerness.weight": (1, 256, 3, 3),
      "rpn.head.scales.4.scale": (1,),
  }
  for k, shape in expect.items():
    assert plain[k] == shape, k
  # 53 convs + 53 frozen BN (x4) in ResNet-50, 8 FPN convs (x2), head 8
  # convs + 8 GN + 3 outputs (x2), 5 scales.
  assert len(plain) == 53 + 53 * 4 + 16 + 38 + 5
  dcn = names("FCOS_imprv_dcnv2_R_50_FPN_1x")
  assert "backbone.body.layer2.0.conv2.weight" not in dcn
  assert dcn["backbone.body.layer2.0.conv2.conv.weight"] == (128, 128, 3, 3)
  assert dcn["backbone.body.layer4.2.conv2.offset.weight"] == (27, 512, 3, 3)
  assert dcn["backbone.body.layer1.0.conv2.weight"] == (64, 64, 3, 3)
  assert dcn["rpn.head.cls_tower.9.conv.bias"] == (256,)
  assert dcn["rpn.head.bbox_tower.9.offset.weight"] == (27, 256, 3, 3)
  assert dcn["rpn.head.bbox_tower.6.weight"] == (256, 256, 3, 3)
  # 13 DCN blocks (+2 tensors each) and 2 head DCN (+2 each).
  assert len(dcn) == len(plain) + 13 * 2 + 2 * 2
  x101 = names("FCOS_imprv_dcnv2_X_101_32x8d_FPN_2x")
  assert x101["backbone.body.layer1.0.conv2.weight"] == (256, 8, 3, 3)
  assert x101["backbone.body.layer2.3.conv2.weight"] == (512, 16, 3, 3)
  assert x101["backbone.body.layer3.22.conv2.conv.weight"] == (1024, 32, 3, 3)
  assert x101["backbone.body.layer3.22.conv2.offset.weight"] == (27, 1024, 3, 3)
  assert x101["backbone.body.layer4.0.conv1.weight"] == (2048, 1024, 1, 1)
  mnv2 = names("FCOS_syncbn_bs32_c128_MNV2_FPN_1x")
  assert mnv2["backbone.body.features.0.0.weight"] == (32, 3, 3, 3)
  assert mnv2["backbone.body.features.1.conv.0.weight"] == (32, 1, 3, 3)
  assert mnv2["backbone.body.features.17.conv.7.running_var"] == (320,)
  assert mnv2["backbone.fpn.fpn_inner2.weight"] == (128, 32, 1, 1)
  assert mnv2["rpn.head.cls_logits.weight"] == (80, 128, 3, 3)
  assert not any(k.startswith("backbone.body.features.18") for k in mnv2)
  paper = official.published_config("FCOS_R_50_FPN_1x")
  assert (paper.p6_from, paper.norm_reg_targets, paper.quality.on) == (
      "p5", False, "cls")


def test_find_published_and_refusal():
  cfg = official.published_config("FCOS_imprv_dcnv2_R_101_FPN_2x",
                                  score_thresh=0.1)
  assert official.find_published(cfg) == "FCOS_imprv_dcnv2_R_101_FPN_2x"
  with pytest.raises(ValueError, match=r"nearest, FCOS_imprv_R_50_FPN_1x, "
                     r"differs in: stride_in_1x1=False \(needs True\)"):
    official.find_published(official.published_config(
        "FCOS_imprv_R_50_FPN_1x", stride_in_1x1=False))
  with pytest.raises(ValueError, match="Unknown official FCOS model"):
    official.published_config("FCOS_R_18")


# --- Parity with the PyTorch restatement -------------------------------------

# Small widths, the real layout: GroupNorm(32) needs 32 | fpn_channels.
SMALL = dict(width=8, fpn_channels=64)
MODELS = ["FCOS_imprv_R_50_FPN_1x", "FCOS_imprv_dcnv2_R_50_FPN_1x",
          "FCOS_R_50_FPN_1x", "FCOS_imprv_dcnv2_X_101_32x8d_FPN_2x",
          "FCOS_syncbn_bs32_c128_MNV2_FPN_1x"]
# Test sizes of each: the same names and layout, fewer channels and blocks
# (ResNeXt at depth 50; MobileNetV2's widths are fixed).
TEST_SIZE = {"FCOS_imprv_dcnv2_X_101_32x8d_FPN_2x": dict(SMALL, depth=50),
             "FCOS_syncbn_bs32_c128_MNV2_FPN_1x": dict(fpn_channels=64)}


def small_config(name):
  return official.published_config(name, **TEST_SIZE.get(name, SMALL))


def torch_model(name, seed, cfg=None):
  """(cfg, the restated model with random weights) of the released model
  `name` at the small width (or of `cfg`)."""
  ref = pytest.importorskip("official_fcos_torch")
  torch = pytest.importorskip("torch")
  cfg = cfg or small_config(name)
  torch.manual_seed(seed)
  model = ref.GeneralizedRCNN(
      depth=cfg.depth, width=cfg.width, fpn_channels=cfg.fpn_channels,
      num_classes=cfg.num_classes, stride_in_1x1=cfg.stride_in_1x1,
      groups=cfg.groups, width_per_group=cfg.width_per_group,
      backbone=cfg.backbone,
      dcn_stages=cfg.dcn_stages, head_dcn=cfg.head_dcn,
      p6_from_c5=cfg.p6_from == "c5", norm_reg_targets=cfg.norm_reg_targets,
      centerness_on_reg=cfg.quality.on == "reg", bn_eps=cfg.bn_eps)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (ref.FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
        m.running_mean.normal_(0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 1.5, generator=g)
      elif isinstance(m, torch.nn.GroupNorm):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
      elif isinstance(m, ref.DFConv2d):
        # Offsets of a few pixels and masks away from 0.5, so the sampling
        # really is deformed.
        fan_in = m.offset.weight[0].numel()
        m.offset.weight.normal_(0, 2.0 / fan_in ** 0.5, generator=g)
        m.offset.bias.normal_(0, 0.5, generator=g)
      elif isinstance(m, ref.Scale):
        m.scale.uniform_(0.8, 1.2, generator=g)
    # Boxes of positive size: random relu heads give many zero distances.
    model.rpn.head.bbox_pred.bias.fill_(1.0 if cfg.norm_reg_targets else 2.0)
  return cfg, model.eval()


def save_checkpoint(model, path):
  """As the released files: {"model": ...} with DataParallel's prefix."""
  torch = pytest.importorskip("torch")
  sd = {"module." + k: v for k, v in model.state_dict().items()}
  torch.save({"model": sd, "iteration": 90000}, path)
  return str(path)


@functools.lru_cache(maxsize=None)
def _apply(cfg):
  return jax.jit(FCOS(cfg).apply), jax.jit(
      lambda v, x: FCOS(cfg).apply(v, x, method=FCOS.level_outputs)), jax.jit(
          lambda v, x: FCOS(cfg).apply(
              v, x, method=lambda m, x: m.backbone(x)))


def close(got, want, what):
  scale = np.abs(want).max()
  assert scale > 0.05, what
  err = np.abs(np.asarray(got) - want).max()
  assert err <= 1e-4 * scale, (what, err, scale)


@pytest.mark.torch
@pytest.mark.parametrize("name", MODELS)
def test_outputs_match_official_restatement(name, tmp_path):
  torch = pytest.importorskip("torch")
  cfg, model = torch_model(name, seed=MODELS.index(name))
  variables = official.convert_state_dict(
      save_checkpoint(model, tmp_path / "model.pth"), cfg)
  x = np.random.default_rng(0).normal(size=(2, 192, 257, 3)).astype(np.float32)
  with torch.no_grad():
    feats, _, (logits, boxes, ctr) = model(
        torch.from_numpy(x).permute(0, 3, 1, 2))
  _, levels_fn, backbone_fn = _apply(cfg)
  for k, (got, want) in enumerate(zip(backbone_fn(variables, x), feats)):
    close(got, want.permute(0, 2, 3, 1).numpy(), f"C{k + 3}")
  for l, (cls, reg, c) in enumerate(levels_fn(variables, x)):
    close(cls, logits[l].permute(0, 2, 3, 1).numpy(), f"cls P{l + 3}")
    # Ours are in strides with normalised targets; the official eval head
    # multiplies by the stride.
    s = cfg.strides[l] if cfg.norm_reg_targets else 1
    close(np.asarray(reg) * s, boxes[l].permute(0, 2, 3, 1).numpy(),
          f"reg P{l + 3}")
    close(c, ctr[l][:, 0].numpy(), f"ctr P{l + 3}")


@pytest.mark.torch
@pytest.mark.parametrize("name", ["FCOS_imprv_dcnv2_R_50_FPN_1x",
                                  "FCOS_R_50_FPN_1x"])
def test_detections_match_official_postprocessing(name):
  """Converted weights + our postprocess == the restated
  FCOSPostProcessor on the same zero-padded batch."""
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("official_fcos_torch")
  cfg, model = torch_model(name, seed=7)
  variables = official.convert_state_dict(
      {k: v for k, v in model.state_dict().items()}, cfg)
  canvas = (256, 320)
  image_hw = np.array([canvas, [200, 301]], np.int32)
  orig_hw = np.array([[512, 640], [301, 450]], np.int32)
  x = np.random.default_rng(5).normal(size=(2, *canvas, 3)).astype(np.float32)
  for b, (h, w) in enumerate(image_hw):
    x[b, h:] = 0
    x[b, :, w:] = 0
  apply, _, _ = _apply(cfg)
  post = make_postprocess_fn(compute_locations(canvas, cfg), cfg)
  ours = jax.device_get(post(apply(variables, x), image_hw, orig_hw))
  with torch.no_grad():
    _, _, head = model(torch.from_numpy(x).permute(0, 3, 1, 2))
  dets = ref.postprocess(head, image_hw.tolist(), orig_hw.tolist())
  for b, (boxes, scores, labels) in enumerate(dets):
    boxes, scores, labels = boxes.numpy(), scores.numpy(), labels.numpy()
    n = int(ours["valid"][b].sum())
    assert len(scores) >= 50 and n == min(len(scores), cfg.inference.max_detections)
    cutoff = np.sort(scores)[::-1][n - 1]
    used = np.zeros(len(scores), bool)
    unmatched = []
    for k in range(n):
      ok = (~used & (labels == ours["classes"][b, k])
            & (np.abs(scores - ours["scores"][b, k]) <= 1e-4)
            & (np.abs(boxes - ours["boxes"][b, k]).max(axis=1) <= 1e-2))
      if ok.any():
        used[np.argmax(ok)] = True
      else:
        unmatched.append(ours["scores"][b, k])
    # Only near-ties at the cut-off may differ.
    assert all(abs(s - cutoff) <= 1e-4 for s in unmatched), (b, unmatched)
    assert len(unmatched) <= 2


# --- Refusals ----------------------------------------------------------------


@pytest.mark.torch
def test_refuses_missing_extra_and_misshaped():
  _, model = torch_model("FCOS_imprv_dcnv2_R_50_FPN_1x", seed=3)
  sd = dict(model.state_dict())
  plain = official.published_config("FCOS_imprv_R_50_FPN_1x", **SMALL)
  with pytest.raises(ValueError) as err:  # A dcnv2 checkpoint, plain config.
    official.convert_state_dict(sd, plain)
  msg = str(err.value)
  # 13 bottlenecks in res3-res5 and the last conv of both towers.
  assert "17 missing: backbone.body.layer2.0.conv2.weight" in msg
  assert "unexpected: backbone.body.layer2.0.conv2.conv.weight" in msg
  assert "rpn.head.bbox_tower.9.offset.bias" in msg  # The whole list.
  dcn = official.published_config("FCOS_imprv_dcnv2_R_50_FPN_1x", **SMALL)
  sd["rpn.head.extra.weight"] = np.zeros(3, np.float32)
  sd["rpn.head.scales.2.scale"] = np.ones(2, np.float32)
  del sd["backbone.fpn.top_blocks.p7.bias"]
  with pytest.raises(ValueError) as err:
    official.convert_state_dict(sd, dcn)
  msg = str(err.value)
  assert "1 missing: backbone.fpn.top_blocks.p7.bias" in msg
  assert "1 unexpected: rpn.head.extra.weight" in msg
  assert "rpn.head.scales.2.scale: got (2,), expected ()" in msg
  # The paper's text (P6 from C5) is not what the paper checkpoints did.
  _, paper_model = torch_model("FCOS_R_50_FPN_1x", seed=3)
  with pytest.raises(ValueError, match=r"top_blocks.p6.weight: got \(64, 64, "
                     r"3, 3\), expected \(64, 256, 3, 3\)"):
    official.convert_state_dict(
        paper_model.state_dict(),
        official.published_config("FCOS_R_50_FPN_1x", p6_from="c5", **SMALL))
  with pytest.raises(ValueError, match=r"bn_eps=1e-05 \(needs 0.0\)"):
    official.convert_state_dict(paper_model.state_dict(),
                                official.published_config(
                                    "FCOS_R_50_FPN_1x", bn_eps=1e-5, **SMALL))


# --- The command line ----------------------------------------------------------


def random_official_state_dict(name, seed=0):
  """Full-size random weights with the released checkpoint's names and
  shapes (NumPy, `module.` prefixed as saved by DataParallel)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for k, (path, shape) in official.state_dict_names(
      official.published_config(name)).items():
    shape = official.official_shape(shape, path)
    sd["module." + k] = (0.01 * rng.standard_normal(shape, np.float32)
                         if path[-1] != "var" else np.ones(shape, np.float32))
  return sd


@pytest.mark.slow
def test_cli_writes_a_workdir_of_the_named_model(tmp_path):
  import json
  import os
  import pathlib
  import subprocess
  import sys
  from fcos_jax.run import checkpoint

  name = "FCOS_imprv_dcnv2_R_50_FPN_1x"
  sd = random_official_state_dict(name)
  sd_path = tmp_path / "model.npz"
  np.savez(sd_path, **sd)
  root = pathlib.Path(__file__).resolve().parents[2]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  run = lambda *args: subprocess.run(
      [sys.executable, "-m", "fcos_jax.cli.convert", f"--official={sd_path}",
       *args], cwd=root, env=env, capture_output=True, text=True, timeout=600)

  workdir = tmp_path / "run"
  proc = run(f"--config=configs/zoo.py:{name}",
             f"--workdir={workdir}", "--config.model.inference.score_thresh=0.1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  model = json.loads((workdir / "config.json").read_text())["model"]
  assert model["dcn_stages"] == [3, 4, 5] and model["head_dcn"] is True
  assert model["inference"]["score_thresh"] == 0.1 and model["num_classes"] == 80
  cats = json.loads((workdir / "categories.json").read_text())["categories"]
  assert cats[0] == {"id": 1, "name": "person"} and len(cats) == 80
  cfg = official.published_config(name, score_thresh=0.1)
  shapes = jax.eval_shape(lambda r: init_variables(cfg, r),
                          jax.random.key(0))["params"]
  shapes = checkpoint.abstract_like(
      shapes, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  params, _ = checkpoint.restore_params(str(workdir / "checkpoints"), 0,
                                        shapes)
  np.testing.assert_array_equal(
      params["head"]["cls_tower_3"]["offset"]["kernel"],
      sd["module.rpn.head.cls_tower.9.offset.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      params["head"]["scale_2"], sd["module.rpn.head.scales.2.scale"][0])

  # The torchvision default config names no official model: refused.
  proc = run(f"--workdir={tmp_path / 'other'}")
  assert proc.returncode == 1
  assert "describes none of the models" in proc.stderr
  assert "configs/zoo.py:MODEL_NAME" in proc.stderr
