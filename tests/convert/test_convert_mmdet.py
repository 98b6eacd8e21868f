"""mmdetection's GFL, VFNet, TOOD and ATSS (configs/gfl, vfnet, tood, atss)
-> fcos_jax: the released models' names and shapes, refusals, and outputs
(head outputs per level, detections) equal to a PyTorch restatement of
mmdetection's network and post-processing (tests/mmdet_heads_torch.py)
with random weights; and the command line: a random GFL checkpoint in
mmdetection's format converted to a run that evaluate.py and predict.py
take."""

import functools

import jax
import numpy as np
import pytest
from flax import traverse_util

from fcos_jax import errors, registry
from fcos_jax.convert import mmdet
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.postprocess import make_postprocess_fn
from fcos_jax.model.fcos import FCOS, init_variables
from mmdet_checkpoints import random_mmdet_state_dict, save_state_dict

R50 = "gfl_r50_fpn_1x_coco"
X101 = "gfl_x101_32x4d_fpn_mstrain_2x_coco"
X101_DCN = "gfl_x101_32x4d_fpn_dconv_c4-c5_mstrain_2x_coco"


@pytest.fixture(autouse=True)
def float32_convolutions():
  with jax.default_matmul_precision("highest"):
    yield


def _names(model):
  return {k: mmdet.mmdet_shape(shape, path) for k, (path, shape) in
          mmdet.state_dict_names(mmdet.published_config(model)).items()}


@pytest.mark.parametrize("model", registry.names("mmdet"))
def test_every_released_model_converts_onto_its_model(model):
  """Each registry model: a checkpoint of its exact names and shapes
  (zeros) converts, and gives every parameter of FCOS(its config) with
  its shape (the model's own, from jax.eval_shape: nothing computed)."""
  cfg = mmdet.published_config(model)
  sd = {k: np.zeros(mmdet.mmdet_shape(shape, path), np.float32)
        for k, (path, shape) in mmdet.state_dict_names(cfg).items()}
  got = traverse_util.flatten_dict(mmdet.convert_state_dict(sd, cfg)["params"])
  want = traverse_util.flatten_dict(jax.eval_shape(
      lambda key: init_variables(cfg, key), jax.random.key(0))["params"])
  assert {k: tuple(v.shape) for k, v in got.items()} == {
      k: tuple(v.shape) for k, v in want.items()}


def test_published_names_and_shapes():
  """A few names and shapes of the released gfl_r50_fpn_1x_coco and X-101
  checkpoints, and the total count."""
  r50 = _names(R50)
  expect = {
      "backbone.conv1.weight": (64, 3, 7, 7),
      "backbone.bn1.running_var": (64,),
      "backbone.layer1.0.downsample.0.weight": (256, 64, 1, 1),
      "backbone.layer2.0.conv2.weight": (128, 128, 3, 3),
      "backbone.layer4.2.bn3.weight": (2048,),
      "neck.lateral_convs.0.conv.weight": (256, 512, 1, 1),
      "neck.lateral_convs.2.conv.bias": (256,),
      "neck.fpn_convs.2.conv.weight": (256, 256, 3, 3),
      "neck.fpn_convs.3.conv.weight": (256, 256, 3, 3),  # P6 on P5
      "neck.fpn_convs.4.conv.bias": (256,),
      "bbox_head.cls_convs.0.conv.weight": (256, 256, 3, 3),
      "bbox_head.reg_convs.3.gn.bias": (256,),
      "bbox_head.gfl_cls.weight": (80, 256, 3, 3),
      "bbox_head.gfl_reg.bias": (68,),
      "bbox_head.scales.4.scale": (),
  }
  for k, shape in expect.items():
    assert r50[k] == shape, k
  assert "bbox_head.cls_convs.0.conv.bias" not in r50
  # 53 convs + 53 BN (x4); 8 neck convs (x2); 8 tower convs, 8 GN (x2),
  # 2 outputs (x2), 5 scales.
  assert len(r50) == 53 + 53 * 4 + 16 + 8 + 16 + 4 + 5
  x101 = _names(X101)
  assert x101["backbone.layer1.0.conv2.weight"] == (128, 4, 3, 3)
  assert x101["backbone.layer3.22.conv2.weight"] == (512, 16, 3, 3)
  assert x101["backbone.layer4.0.conv1.weight"] == (1024, 1024, 1, 1)
  dcn = _names(X101_DCN)  # mmcv's DCN v1 in res4-res5: 18 offsets.
  assert dcn["backbone.layer3.0.conv2.weight"] == (512, 16, 3, 3)
  assert dcn["backbone.layer3.0.conv2.conv_offset.weight"] == (18, 512, 3, 3)
  assert dcn["backbone.layer4.2.conv2.conv_offset.bias"] == (18,)
  assert "backbone.layer2.0.conv2.conv_offset.bias" not in dcn
  assert len(dcn) == len(x101) + 2 * (23 + 3)
  cfg = mmdet.published_config("gfl_r101_fpn_mstrain_2x_coco",
                               score_thresh=0.2)
  assert mmdet.find_published(cfg) == "gfl_r101_fpn_mstrain_2x_coco"
  with pytest.raises(ValueError, match=r"nearest, gfl_r50_fpn_1x_coco, "
                     r"differs in: p7_relu=True \(needs False\)"):
    mmdet.find_published(mmdet.published_config(R50, p7_relu=True))


# --- Parity with the PyTorch restatement -------------------------------------

# Small widths, the real layout: GroupNorm(32) needs 32 | fpn_channels.
SMALL = dict(width=8, fpn_channels=64)


def torch_model(seed, cfg):
  """The restated GFL of `cfg` with random weights (eval mode)."""
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("mmdet_heads_torch")
  official = pytest.importorskip("official_fcos_torch")
  torch.manual_seed(seed)
  model = ref.GFL(depth=cfg.depth, width=cfg.width, groups=cfg.groups,
                  width_per_group=cfg.width_per_group,
                  fpn_channels=cfg.fpn_channels, num_classes=cfg.num_classes,
                  reg_max=cfg.quality.reg_max, dcn_stages=cfg.dcn_stages)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, official.FrozenBatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
        m.running_mean.normal_(0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 1.5, generator=g)
      elif isinstance(m, torch.nn.GroupNorm):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
      elif isinstance(m, ref.Scale):
        m.scale.uniform_(0.8, 1.2, generator=g)
      elif isinstance(m, ref.DeformConv2dPack):
        # Offsets of a few pixels, so the sampling really is deformed.
        fan_in = m.conv_offset.weight[0].numel()
        m.conv_offset.weight.normal_(0, 2.0 / fan_in ** 0.5, generator=g)
        m.conv_offset.bias.normal_(0, 0.5, generator=g)
    # Few enough candidates that the scores spread (prior-like bias).
    model.bbox_head.gfl_cls.bias.normal_(-3.5, 0.3, generator=g)
  return model.eval()


def save_checkpoint(model, path, meta=True):
  """As mmdetection saves: {"meta": {...}, "state_dict": ...}."""
  torch = pytest.importorskip("torch")
  ckpt = {"state_dict": model.state_dict()}
  if meta:
    ckpt["meta"] = {"mmdet_version": "2.1.0", "epoch": 12, "iter": 87960,
                    "CLASSES": ("person", "bicycle"), "config": "model = ..."}
  torch.save(ckpt, path)
  return str(path)


@functools.lru_cache(maxsize=None)
def _apply(cfg):
  return jax.jit(FCOS(cfg).apply), jax.jit(
      lambda v, x: FCOS(cfg).apply(v, x, method=FCOS.level_outputs))


def close(got, want, what):
  scale = np.abs(want).max()
  assert scale > 0.05, what
  err = np.abs(np.asarray(got) - want).max()
  assert err <= 1e-4 * scale, (what, err, scale)


CANVAS = (128, 160)


# The models of the parity test at the small width: R-50, and the DCN v1
# ResNeXt at depth 50 (its layout: grouped 3x3s, DCN in res4-res5).
PARITY = {R50: SMALL, X101_DCN: dict(SMALL, depth=50, width=16)}


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(PARITY))
def test_head_outputs_and_detections_match_mmdet_restatement(name, tmp_path):
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("mmdet_heads_torch")
  cfg = mmdet.published_config(name, **PARITY[name])
  model = torch_model(0, cfg)
  variables = mmdet.convert_state_dict(
      save_checkpoint(model, tmp_path / "gfl.pth"), cfg)
  image_hw = np.array([CANVAS, [100, 131]], np.int32)
  orig_hw = np.array([[256, 320], [150, 200]], np.int32)
  x = np.random.default_rng(1).normal(size=(2, *CANVAS, 3)).astype(np.float32)
  for b, (h, w) in enumerate(image_hw):  # A zero-padded batch.
    x[b, h:] = 0
    x[b, :, w:] = 0
  with torch.no_grad():
    head = model(torch.from_numpy(x).permute(0, 3, 1, 2))
  apply, levels_fn = _apply(cfg)
  n = cfg.quality.reg_max + 1
  for l, (cls, reg, ctr, dist) in enumerate(levels_fn(variables, x)):
    assert ctr is None
    want_cls = head[0][l].permute(0, 2, 3, 1).numpy()
    want_dist = head[1][l].permute(0, 2, 3, 1)  # [B, H, W, 4 * n]
    close(cls, want_cls, f"cls P{l + 3}")
    close(np.asarray(dist).reshape(want_dist.shape), want_dist.numpy(),
          f"distribution P{l + 3}")
    with torch.no_grad():
      want_reg = model.bbox_head.integral(want_dist.reshape(-1, 4 * n))
    close(np.asarray(reg).reshape(-1, 4), want_reg.numpy(),
          f"distances P{l + 3}")

  post = make_postprocess_fn(compute_locations(CANVAS, cfg), cfg)
  ours = jax.device_get(post(apply(variables, x), image_hw, orig_hw))
  dets = ref.postprocess(head, model, image_hw.tolist(), orig_hw.tolist())
  for b, (boxes, scores, labels) in enumerate(dets):
    boxes, scores, labels = boxes.numpy(), scores.numpy(), labels.numpy()
    n_ours = int(ours["valid"][b].sum())
    assert len(scores) >= 50 and n_ours == len(scores), (n_ours, len(scores))
    cutoff = np.sort(scores)[::-1][n_ours - 1]
    used = np.zeros(len(scores), bool)
    unmatched = []
    for k in range(n_ours):
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


def _refused(bad, cfg) -> str:
  """The one DataError that converting `bad` raises: its message (the
  full list of missing, unexpected and mis-shaped tensors)."""
  with pytest.raises(errors.DataError) as err:
    mmdet.convert_state_dict(bad, cfg)
  return str(err.value)


# --- Refusals ----------------------------------------------------------------


def test_converts_random_checkpoint_and_refuses_bad_ones(tmp_path):
  cfg = mmdet.published_config(R50, **SMALL)
  sd = random_mmdet_state_dict(cfg)
  params = mmdet.convert_state_dict({"meta": {}, "state_dict": sd},
                                    cfg)["params"]
  # The state dict saved as .npz (no torch needed) converts alike.
  np.savez(tmp_path / "gfl.npz", **sd)
  from_npz = mmdet.convert_state_dict(str(tmp_path / "gfl.npz"), cfg)
  jax.tree.map(np.testing.assert_array_equal, from_npz["params"], params)
  np.testing.assert_array_equal(
      params["head"]["box_tower_2"]["kernel"],
      sd["bbox_head.reg_convs.2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["head"]["cls_tower_0"]["bias"], 0.0)
  np.testing.assert_array_equal(params["head"]["cls_norm_1"]["scale"],
                                sd["bbox_head.cls_convs.1.gn.weight"])
  np.testing.assert_array_equal(params["fpn"]["p7"]["bias"],
                                sd["neck.fpn_convs.4.conv.bias"])
  np.testing.assert_array_equal(params["fpn"]["lateral3"]["bias"],
                                sd["neck.lateral_convs.0.conv.bias"])
  assert params["head"]["scale_3"].shape == ()
  assert params["head"]["scale_3"] == sd["bbox_head.scales.3.scale"]
  # (1,) scales (some mmcv versions) are taken too.
  one = dict(sd, **{"bbox_head.scales.0.scale": np.ones(1, np.float32)})
  mmdet.convert_state_dict(one, cfg)

  # Missing, unexpected and mis-shaped: the full list in one error.
  bad = dict(sd)
  del bad["neck.fpn_convs.4.conv.bias"]
  del bad["bbox_head.reg_convs.3.gn.weight"]
  bad["bbox_head.atss_centerness.weight"] = np.zeros((1, 64, 3, 3), np.float32)
  bad["bbox_head.gfl_reg.weight"] = np.zeros((4, 64, 3, 3), np.float32)
  msg = _refused(bad, cfg)
  assert ("2 missing: bbox_head.reg_convs.3.gn.weight, "
          "neck.fpn_convs.4.conv.bias") in msg
  assert "1 unexpected: bbox_head.atss_centerness.weight" in msg
  assert "bbox_head.gfl_reg.weight: got (4, 64, 3, 3), expected (68, 64, 3, 3)" in msg
  # Another Integral.
  with pytest.raises(errors.DataError, match="reg_max=16"):
    mmdet.convert_state_dict(
        dict(sd, **{"bbox_head.integral.project": np.arange(8.0)}), cfg)
  # A config that computes something else: the fields named.
  with pytest.raises(errors.ConfigError, match=r"p7_relu=True \(needs False\)"):
    mmdet.convert_state_dict(sd, cfg.replace(p7_relu=True))
  with pytest.raises(errors.ConfigError, match=r"location_offset='half'"):
    mmdet.convert_state_dict(sd, cfg.replace(location_offset="half"))


# --- The command line ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.torch
def test_cli_converts_an_mmdet_checkpoint_to_a_run_that_evaluates(tmp_path):
  """A random full-size gfl_r50_fpn_1x_coco checkpoint, saved as
  mmdetection saves it -> fcos-convert --mmdet -> evaluate.py and
  predict.py on a tiny COCO-format set."""
  import json
  import os

  import coco_files as testing
  from cli_runs import ROOT, run_python
  from fcos_jax.convert import torchvision as tv
  pytest.importorskip("torch")

  sd = random_mmdet_state_dict(mmdet.published_config(R50), seed=1)
  pth = tmp_path / "gfl_r50_fpn_1x_coco_20200629_121244-25944287.pth"
  save_state_dict(pth, sd, mmdet_version="2.1.0", CLASSES=("person",))
  cats = [(c["id"], c["name"]) for c in tv.coco_categories()]
  gt_json, img_dir = testing.write_coco80(str(tmp_path / "coco"))
  workdir = tmp_path / "converted"
  data = testing.val_flags(gt_json, img_dir) + [
      "--config.compilation_cache_dir="]
  run_python(["-m", "fcos_jax.cli.convert", f"--mmdet={pth}",
       f"--config=configs/zoo.py:{R50}", f"--workdir={workdir}"] + data)
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["p7_relu"] is False
  assert config["model"]["quality"]["name"] == "gfl_joint"
  assert config["model"]["inference"]["score_thresh"] == 0.02
  saved = json.loads((workdir / "categories.json").read_text())["categories"]
  assert [c["id"] for c in saved] == [c for c, _ in cats]

  # Another model's config is refused by name, nothing written.
  proc = run_python(["-m", "fcos_jax.cli.convert", f"--mmdet={pth}",
              f"--config=configs/zoo.py:{X101}",
              f"--workdir={tmp_path / 'x101'}"], check=False)
  assert proc.returncode == 1 and "backbone.layer3.22.conv1.weight" in (
      proc.stderr), proc.stderr[-2000:]
  assert not (tmp_path / "x101" / "checkpoints").exists()

  proc = run_python([str(ROOT / "evaluate.py"), f"--workdir={workdir}"])
  assert "COCO bbox evaluation at step 0 on 2 images" in proc.stdout
  want = json.loads((workdir / "eval" / "detections_step0.json").read_text())
  assert len(want) > 20
  assert {r["category_id"] for r in want} <= {c for c, _ in cats}

  out = tmp_path / "pred"
  run_python([str(ROOT / "predict.py"), f"--workdir={workdir}",
       f"--images={img_dir}", f"--out={out}", "--noexif"])
  got = json.loads((out / "detections.json").read_text())
  ids = {im["file_name"]: im["id"]
         for im in json.loads(open(gt_json).read())["images"]}
  for r in got:
    r.pop("category_name")
    r["image_id"] = ids[os.path.basename(r.pop("file_name"))]
  key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])
  assert sorted(got, key=key) == sorted(want, key=key)


# --- VFNet (configs/vfnet) ---------------------------------------------------

VFNET = "vfnet_r50_fpn_1x_coco"


def test_vfnet_published_names_and_shapes():
  """The released vfnet_r50_fpn_1x_coco's head names and shapes, the
  count, and the config the converter asks for."""
  names = _names(VFNET)
  expect = {
      "neck.fpn_convs.4.conv.weight": (256, 256, 3, 3),  # P7 on ReLU(P6)
      "bbox_head.cls_convs.2.conv.weight": (256, 256, 3, 3),
      "bbox_head.reg_convs.2.gn.bias": (256,),
      "bbox_head.vfnet_reg_conv.conv.weight": (256, 256, 3, 3),
      "bbox_head.vfnet_reg_conv.gn.weight": (256,),
      "bbox_head.vfnet_reg.weight": (4, 256, 3, 3),
      "bbox_head.vfnet_reg_refine.bias": (4,),
      "bbox_head.vfnet_reg_refine_dconv.weight": (256, 256, 3, 3),
      "bbox_head.vfnet_cls_dconv.weight": (256, 256, 3, 3),
      "bbox_head.vfnet_cls.weight": (80, 256, 3, 3),
      "bbox_head.scales_refine.4.scale": (),
  }
  for k, shape in expect.items():
    assert names[k] == shape, k
  for k in ("bbox_head.cls_convs.3.conv.weight",
            "bbox_head.vfnet_reg_conv.conv.bias",
            "bbox_head.vfnet_cls_dconv.bias"):
    assert k not in names
  # Backbone and neck as GFL's; 6 tower convs + 6 GN (x2); vfnet_reg_conv
  # (conv, GN x2); 3 convs (x2), 2 dconvs; 10 scales.
  assert len(names) == 53 + 53 * 4 + 16 + 6 + 12 + 3 + 6 + 2 + 10
  mdconv = _names("vfnet_x101_64x4d_fpn_mdconv_c3-c5_mstrain_2x_coco")
  assert mdconv["backbone.layer2.0.conv2.weight"] == (512, 8, 3, 3)
  assert mdconv["backbone.layer2.0.conv2.conv_offset.weight"] == (
      27, 512, 3, 3)  # DCNv2: 18 offsets, 9 mask logits.
  assert mdconv["bbox_head.cls_convs.2.conv.weight"] == (256, 256, 3, 3)
  assert mdconv["bbox_head.reg_convs.2.conv.conv_offset.bias"] == (27,)
  assert "bbox_head.reg_convs.1.conv.conv_offset.bias" not in mdconv
  assert "backbone.layer1.0.conv2.conv_offset.bias" not in mdconv
  cfg = mmdet.published_config("vfnet_r101_fpn_mstrain_2x_coco")
  assert cfg.p7_relu and cfg.depth == 101
  # The 1x and mstrain 2x models compute alike: the first is named.
  assert cfg == mmdet.published_config("vfnet_r101_fpn_1x_coco")
  assert mmdet.find_published(cfg) == "vfnet_r101_fpn_1x_coco"


def vfnet_torch_model(seed, cfg):
  """mmdetection's VFNet restated (tests/mmdet_heads_torch.py's backbone
  and FPN, tests/vfnet_torch.py's head) with random weights (eval)."""
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("mmdet_heads_torch")
  vf = pytest.importorskip("vfnet_torch")
  official = pytest.importorskip("official_fcos_torch")
  torch.manual_seed(seed)
  model = ref.VFNet(depth=cfg.depth, width=cfg.width,
                    fpn_channels=cfg.fpn_channels,
                    num_classes=cfg.num_classes,
                    mdconv=bool(cfg.dcn_stages))
  g = torch.Generator().manual_seed(seed)
  head = model.bbox_head
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, official.FrozenBatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
        m.running_mean.normal_(0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 1.5, generator=g)
      elif isinstance(m, torch.nn.GroupNorm):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
      elif isinstance(m, vf.Scale):
        m.scale.uniform_(0.8, 1.2, generator=g)
      elif isinstance(m, vf.DeformConv2d):  # mmcv's init; torch.empty here.
        bound = m.weight[0].numel() ** -0.5
        m.weight.uniform_(-bound, bound, generator=g)
      elif isinstance(m, ref.ModulatedDeformConv2dPack):
        # Offsets of a few pixels and masks away from 1.
        fan_in = m.conv_offset.weight[0].numel()
        m.conv_offset.weight.normal_(0, 2.0 / fan_in ** 0.5, generator=g)
        m.conv_offset.bias.normal_(0, 0.5, generator=g)
    # Boxes of a few strides (offsets that really deform), a prior-like
    # class bias.
    for conv in (head.vfnet_reg, head.vfnet_reg_refine):
      conv.weight.normal_(0, 0.02, generator=g)
      conv.bias.normal_(-1.0, 0.3, generator=g)
    head.vfnet_reg_refine.bias.normal_(0.0, 0.2, generator=g)
    head.vfnet_cls.bias.normal_(-3.5, 0.3, generator=g)
    # Scores that vary across locations (fewer near-ties in NMS).
    head.vfnet_cls.weight.mul_(4.0)
  return model.eval()


VFNET_MDCONV = "vfnet_r50_fpn_mdconv_c3-c5_mstrain_2x_coco"


@pytest.mark.torch
@pytest.mark.parametrize("name", [VFNET, VFNET_MDCONV])
def test_vfnet_head_outputs_and_detections_match_mmdet_restatement(
    name, tmp_path):
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("mmdet_heads_torch")
  cfg = mmdet.published_config(name, **SMALL)
  model = vfnet_torch_model(0, cfg)
  variables = mmdet.convert_state_dict(
      save_checkpoint(model, tmp_path / "vfnet.pth"), cfg)
  np.testing.assert_array_equal(
      variables["params"]["head"]["vfnet_reg_conv"]["bias"], 0.0)
  image_hw = np.array([CANVAS, [100, 131]], np.int32)
  orig_hw = np.array([[256, 320], [150, 200]], np.int32)
  x = np.random.default_rng(1).normal(size=(2, *CANVAS, 3)).astype(np.float32)
  for b, (h, w) in enumerate(image_hw):  # A zero-padded batch.
    x[b, h:] = 0
    x[b, :, w:] = 0
  with torch.no_grad():
    head = model(torch.from_numpy(x).permute(0, 3, 1, 2))
  apply, levels_fn = _apply(cfg)
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  for l, (cls, refine, init) in enumerate(levels_fn(variables, x)):
    want_cls, want_init, want_refine = head[l]
    close(cls, nhwc(want_cls), f"cls P{l + 3}")
    close(init, nhwc(want_init), f"initial box P{l + 3}")
    close(refine, nhwc(want_refine), f"refined box P{l + 3}")

  post = make_postprocess_fn(compute_locations(CANVAS, cfg), cfg)
  ours = jax.device_get(post(apply(variables, x), image_hw, orig_hw))
  dets = ref.postprocess_vfnet(head, model, image_hw.tolist(),
                               orig_hw.tolist())
  _same_detections(ours, dets)


def _same_detections(ours, dets, max_empty=0):
  """Our detections are mmdetection's (`dets`), but for near-ties at the
  cut-off. (With min_box_size 0, as the registry's mmdetection models
  have, fcos_jax drops the boxes that clipping left empty, as mmdetection
  does; `max_empty` of them are allowed otherwise.)"""
  for b, (boxes, scores, labels) in enumerate(dets):
    boxes, scores, labels = boxes.numpy(), scores.numpy(), labels.numpy()
    n_ours = int(ours["valid"][b].sum())
    assert len(scores) >= 50 and n_ours >= len(scores), (n_ours, len(scores))
    cutoff = np.sort(scores)[::-1][len(scores) - 1]
    used = np.zeros(len(scores), bool)
    unmatched, empty = [], 0
    for k in range(n_ours):
      ok = (~used & (labels == ours["classes"][b, k])
            & (np.abs(scores - ours["scores"][b, k]) <= 1e-4)
            & (np.abs(boxes - ours["boxes"][b, k]).max(axis=1) <= 1e-2))
      x0, y0, x1, y1 = ours["boxes"][b, k]
      if ok.any():
        used[np.argmax(ok)] = True
      elif x1 <= x0 or y1 <= y0:
        empty += 1
      else:
        unmatched.append(ours["scores"][b, k])
    # Only near-ties at the cut-off may differ, and the empty boxes push
    # as many of mmdetection's last ones out.
    assert all(abs(s - cutoff) <= 1e-4 for s in unmatched), (b, unmatched)
    assert len(unmatched) <= 2 and empty <= max_empty, (unmatched, empty)
    # Both capped at max_per_img, or ours has just the empty ones more.
    assert n_ours in (len(scores), len(scores) + empty), (n_ours, empty)


def test_vfnet_converts_random_checkpoint_and_refuses_bad_ones():
  cfg = mmdet.published_config(VFNET, **SMALL)
  sd = random_mmdet_state_dict(cfg)
  params = mmdet.convert_state_dict({"meta": {}, "state_dict": sd},
                                    cfg)["params"]["head"]
  np.testing.assert_array_equal(
      params["vfnet_cls_dconv"]["kernel"],
      sd["bbox_head.vfnet_cls_dconv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["vfnet_reg_norm"]["scale"],
                                sd["bbox_head.vfnet_reg_conv.gn.weight"])
  np.testing.assert_array_equal(params["vfnet_reg_refine"]["bias"],
                                sd["bbox_head.vfnet_reg_refine.bias"])
  np.testing.assert_array_equal(params["box_tower_2"]["bias"], 0.0)
  assert params["scale_refine_2"] == sd["bbox_head.scales_refine.2.scale"]
  one = dict(sd, **{"bbox_head.scales_refine.0.scale": np.ones(1, np.float32)})
  mmdet.convert_state_dict(one, cfg)  # (1,) scales are taken too.

  bad = dict(sd)
  del bad["bbox_head.scales_refine.4.scale"]
  bad["bbox_head.vfnet_cls_dconv.bias"] = np.zeros(64, np.float32)
  bad["bbox_head.vfnet_reg.weight"] = np.zeros((68, 64, 3, 3), np.float32)
  msg = _refused(bad, cfg)
  assert "fcos_jax VFNet (mmdetection layout)" in msg
  assert "1 missing: bbox_head.scales_refine.4.scale" in msg
  assert "1 unexpected: bbox_head.vfnet_cls_dconv.bias" in msg
  assert ("bbox_head.vfnet_reg.weight: got (68, 64, 3, 3), expected "
          "(4, 64, 3, 3)") in msg
  # GFL's FPN (no ReLU before P7) or 4 tower convs compute something else.
  with pytest.raises(errors.ConfigError, match=r"p7_relu=False \(needs True\)"):
    mmdet.convert_state_dict(sd, cfg.replace(p7_relu=False))
  with pytest.raises(errors.ConfigError, match=r"head_convs=4 \(needs 3\)"):
    mmdet.convert_state_dict(sd, cfg.replace(head_convs=4))
  # A GFL checkpoint given for VFNet: the VFNet names it lacks are listed.
  gfl = mmdet.published_config(R50, **SMALL)
  with pytest.raises(errors.DataError, match="bbox_head.vfnet_cls.weight"):
    mmdet.convert_state_dict(random_mmdet_state_dict(gfl), cfg)


# --- TOOD (configs/tood, anchor_free) ----------------------------------------

TOOD = "tood_r50_fpn_1x_coco"


def test_tood_published_names_and_shapes():
  names = _names(TOOD)
  expect = {
      "bbox_head.inter_convs.5.conv.weight": (256, 256, 3, 3),
      "bbox_head.inter_convs.0.gn.bias": (256,),
      "bbox_head.cls_decomp.layer_attention.0.weight": (32, 1536, 1, 1),
      "bbox_head.reg_decomp.layer_attention.2.bias": (6,),
      "bbox_head.cls_decomp.reduction_conv.conv.weight": (256, 1536, 1, 1),
      "bbox_head.reg_decomp.reduction_conv.gn.weight": (256,),
      "bbox_head.tood_cls.weight": (80, 256, 3, 3),
      "bbox_head.tood_reg.bias": (4,),
      "bbox_head.cls_prob_module.0.weight": (64, 1536, 1, 1),
      "bbox_head.cls_prob_module.2.weight": (1, 64, 3, 3),
      "bbox_head.reg_offset_module.2.bias": (8,),
      "bbox_head.scales.4.scale": (),
  }
  for k, shape in expect.items():
    assert names[k] == shape, k
  assert "bbox_head.inter_convs.0.conv.bias" not in names
  assert "bbox_head.cls_decomp.reduction_conv.conv.bias" not in names
  # Backbone and neck; 6 inter convs + GN (x2); 2 decompositions (2 convs
  # x2, reduction conv, GN x2); 2 outputs, 4 branch convs (x2); 5 scales.
  assert len(names) == 53 + 53 * 4 + 16 + 6 + 12 + 2 * 7 + 4 + 8 + 5
  x64 = _names("tood_x101_64x4d_fpn_mstrain_2x_coco")
  assert x64["backbone.layer1.0.conv2.weight"] == (256, 4, 3, 3)
  cfg = mmdet.published_config("tood_r101_fpn_mstrain_2x_coco")
  assert not cfg.p7_relu and cfg.head_convs == 6
  assert mmdet.find_published(cfg) == "tood_r101_fpn_mstrain_2x_coco"
  dconv = _names(TOOD_DCONV)  # mmcv's DCNv2: 27 / 4 x 27 offset channels.
  assert dconv["backbone.layer2.0.conv2.conv_offset.weight"] == (
      27, 128, 3, 3)
  assert dconv["bbox_head.inter_convs.1.conv.conv_offset.weight"] == (
      108, 256, 3, 3)
  assert dconv["bbox_head.inter_convs.1.conv.weight"] == (256, 256, 3, 3)
  assert "bbox_head.inter_convs.2.conv.conv_offset.bias" not in dconv
  assert "bbox_head.inter_convs.0.conv.bias" not in dconv
  assert len(dconv) == len(_names("tood_r101_fpn_mstrain_2x_coco")) + 2 * (
      4 + 23 + 3) + 2 * 2


def tood_torch_model(seed, cfg):
  """mmdetection's TOOD restated (tests/mmdet_heads_torch.py's backbone and
  FPN, tests/tood_torch.py's T-head) with random weights (eval)."""
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("mmdet_heads_torch")
  official = pytest.importorskip("official_fcos_torch")
  torch.manual_seed(seed)
  model = ref.TOOD(depth=cfg.depth, width=cfg.width,
                   fpn_channels=cfg.fpn_channels, num_classes=cfg.num_classes,
                   anchor_type=("anchor_based" if cfg.box.name == "anchor_deltas"
                                else "anchor_free"),
                   dcn_stages=cfg.dcn_stages, num_dcn=cfg.quality.num_dcn)
  g = torch.Generator().manual_seed(seed)
  head = model.bbox_head
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, official.FrozenBatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
        m.running_mean.normal_(0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 1.5, generator=g)
      elif isinstance(m, torch.nn.GroupNorm):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
    for s in head.scales:
      s.uniform_(0.8, 1.2, generator=g)
    # Boxes of a few strides, offsets of about a cell, spread scores.
    head.tood_reg.weight.normal_(0, 0.02, generator=g)
    head.tood_reg.bias.normal_(0.5, 0.3, generator=g)
    head.reg_offset_module[2].weight.normal_(0, 0.02, generator=g)
    head.reg_offset_module[2].bias.normal_(0, 0.7, generator=g)
    head.tood_cls.bias.normal_(-2.5, 0.3, generator=g)
    head.cls_prob_module[2].bias.fill_(-1.5)
  return model.eval()


TOOD_ANCHOR = "tood_r50_fpn_anchor_based_1x_coco"
TOOD_DCONV = "tood_r101_fpn_dconv_c3-c5_mstrain_2x_coco"


@pytest.mark.torch
@pytest.mark.parametrize("name", [TOOD, TOOD_ANCHOR, TOOD_DCONV])
def test_tood_head_outputs_and_detections_match_mmdet_restatement(
    name, tmp_path):
  """The dconv model at depth 50 (its DCNv2 backbone stages and T-head
  inter convs; depth only adds blocks)."""
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("mmdet_heads_torch")
  cfg = mmdet.published_config(name, **SMALL, **(
      {"depth": 50} if name == TOOD_DCONV else {}))
  model = tood_torch_model(0, cfg)
  path = tmp_path / "tood.pth"
  torch.save({"meta": {"mmdet_version": "2.20.0"},
              "state_dict": ref.tood_state_dict(model)}, path)
  variables = mmdet.convert_state_dict(str(path), cfg)
  image_hw = np.array([CANVAS, [100, 131]], np.int32)
  orig_hw = np.array([[256, 320], [150, 200]], np.int32)
  x = np.random.default_rng(1).normal(size=(2, *CANVAS, 3)).astype(np.float32)
  for b, (h, w) in enumerate(image_hw):  # A zero-padded batch.
    x[b, h:] = 0
    x[b, :, w:] = 0
  with torch.no_grad():
    head = model(torch.from_numpy(x).permute(0, 3, 1, 2))
  apply, levels_fn = _apply(cfg)
  for l, (cls, ltrb) in enumerate(levels_fn(variables, x)):
    s = cfg.strides[l]
    want_score, want_box = (t.permute(0, 2, 3, 1).numpy() for t in head[l])
    close(jax.nn.sigmoid(cls), want_score, f"score P{l + 3}")
    hl, wl = ltrb.shape[1:3]
    cy, cx = np.meshgrid(np.arange(hl) * s, np.arange(wl) * s, indexing="ij")
    ltrb = np.asarray(ltrb)
    box = np.stack([cx - ltrb[..., 0], cy - ltrb[..., 1],
                    cx + ltrb[..., 2], cy + ltrb[..., 3]], -1)
    close(box, want_box * s, f"box P{l + 3}")

  post = make_postprocess_fn(compute_locations(CANVAS, cfg), cfg)
  ours = jax.device_get(post(apply(variables, x), image_hw, orig_hw))
  # Neither clips TOOD's boxes to the image (inference.clip_boxes False).
  assert not cfg.inference.clip_boxes and cfg.inference.min_box_size == 0
  dets = ref.postprocess_tood(head, model, image_hw.tolist(),
                              orig_hw.tolist())
  _same_detections(ours, dets)


def test_tood_refuses_bad_checkpoints():
  cfg = mmdet.published_config(TOOD, **SMALL)
  sd = random_mmdet_state_dict(cfg)
  params = mmdet.convert_state_dict(sd, cfg)["params"]["head"]
  np.testing.assert_array_equal(
      params["reg_decomp"]["reduction_conv"]["kernel"],
      sd["bbox_head.reg_decomp.reduction_conv.conv.weight"].transpose(
          2, 3, 1, 0))
  np.testing.assert_array_equal(
      params["cls_decomp"]["layer_attention_2"]["bias"],
      sd["bbox_head.cls_decomp.layer_attention.2.bias"])
  np.testing.assert_array_equal(params["inter_norm_3"]["scale"],
                                sd["bbox_head.inter_convs.3.gn.weight"])
  bad = dict(sd)
  del bad["bbox_head.cls_decomp.reduction_conv.gn.bias"]
  bad["bbox_head.inter_convs.0.conv.conv_offset.weight"] = np.zeros(
      (27, 64, 3, 3), np.float32)  # A dconv T-head (num_dcn > 0).
  msg = _refused(bad, cfg)
  assert "fcos_jax TOOD (mmdetection layout)" in msg
  assert "1 missing: bbox_head.cls_decomp.reduction_conv.gn.bias" in msg
  assert "1 unexpected: bbox_head.inter_convs.0.conv.conv_offset.weight" in msg
  with pytest.raises(errors.ConfigError, match=r"p7_relu=True \(needs False\)"):
    mmdet.convert_state_dict(sd, cfg.replace(p7_relu=True))
  # The anchor-based model has the same names: its config converts them,
  # and no other box choice passes for a TOOD one.
  anchor = mmdet.published_config(TOOD_ANCHOR, **SMALL)
  assert anchor.replace(box=cfg.box) == cfg
  mmdet.convert_state_dict(sd, anchor)


# --- ATSS (configs/atss: ATSSHead, DeltaXYWH anchor deltas) -----------------

ATSS = "atss_r50_fpn_1x_coco"


def test_atss_published_names_and_shapes():
  names = _names(ATSS)
  expect = {
      "neck.fpn_convs.4.conv.weight": (256, 256, 3, 3),  # P7 on P6
      "bbox_head.cls_convs.3.conv.weight": (256, 256, 3, 3),
      "bbox_head.reg_convs.0.gn.bias": (256,),
      "bbox_head.atss_cls.weight": (80, 256, 3, 3),
      "bbox_head.atss_cls.bias": (80,),
      "bbox_head.atss_reg.weight": (4, 256, 3, 3),
      "bbox_head.atss_centerness.bias": (1,),
      "bbox_head.scales.4.scale": (),
  }
  for k, shape in expect.items():
    assert names[k] == shape, k
  for k in ("bbox_head.cls_convs.0.conv.bias", "bbox_head.gfl_cls.weight",
            "bbox_head.centerness.weight"):
    assert k not in names
  # Backbone and neck as GFL's; 8 tower convs, 8 GN (x2); 3 outputs (x2),
  # 5 scales.
  assert len(names) == 53 + 53 * 4 + 16 + 8 + 16 + 6 + 5
  cfg = mmdet.published_config("atss_r101_fpn_1x_coco")
  assert cfg.depth == 101 and cfg.box.name == "anchor_deltas"
  assert _names("atss_r101_fpn_1x_coco")[
      "backbone.layer3.22.conv3.weight"] == (1024, 256, 1, 1)
  assert mmdet.find_published(cfg) == "atss_r101_fpn_1x_coco"


def atss_torch_model(seed, cfg):
  """mmdetection's ATSS restated (tests/mmdet_heads_torch.py) with random
  weights (eval)."""
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("mmdet_heads_torch")
  official = pytest.importorskip("official_fcos_torch")
  torch.manual_seed(seed)
  model = ref.ATSS(depth=cfg.depth, width=cfg.width,
                   fpn_channels=cfg.fpn_channels, num_classes=cfg.num_classes)
  g = torch.Generator().manual_seed(seed)
  head = model.bbox_head
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, official.FrozenBatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
        m.running_mean.normal_(0, 0.1, generator=g)
        m.running_var.uniform_(0.5, 1.5, generator=g)
      elif isinstance(m, torch.nn.GroupNorm):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0, 0.1, generator=g)
      elif isinstance(m, ref.Scale):
        m.scale.uniform_(0.8, 1.2, generator=g)
    # Deltas of about a unit (boxes off their anchors, some beside their
    # location), centre-ness that varies, a prior-like class bias.
    head.atss_reg.weight.normal_(0, 0.1, generator=g)
    head.atss_reg.bias.copy_(torch.tensor([0.5, -0.5, 0.5, 0.5]))
    head.atss_centerness.weight.normal_(0, 0.1, generator=g)
    head.atss_cls.bias.normal_(-4.0, 0.3, generator=g)
  return model.eval()


@pytest.mark.torch
def test_atss_head_outputs_and_detections_match_mmdet_restatement(tmp_path):
  torch = pytest.importorskip("torch")
  ref = pytest.importorskip("mmdet_heads_torch")
  cfg = mmdet.published_config(ATSS, **SMALL)
  model = atss_torch_model(0, cfg)
  variables = mmdet.convert_state_dict(
      save_checkpoint(model, tmp_path / "atss.pth"), cfg)
  image_hw = np.array([CANVAS, [100, 131]], np.int32)
  orig_hw = np.array([[256, 320], [150, 200]], np.int32)
  x = np.random.default_rng(1).normal(size=(2, *CANVAS, 3)).astype(np.float32)
  for b, (h, w) in enumerate(image_hw):  # A zero-padded batch.
    x[b, h:] = 0
    x[b, :, w:] = 0
  with torch.no_grad():
    head = model(torch.from_numpy(x).permute(0, 3, 1, 2))
  apply, levels_fn = _apply(cfg)
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  beside = 0
  for l, (cls, ltrb, ctr) in enumerate(levels_fn(variables, x)):
    want_cls, want_deltas, want_ctr = head[l]
    close(cls, nhwc(want_cls), f"cls P{l + 3}")
    close(ctr, nhwc(want_ctr)[..., 0], f"centerness P{l + 3}")
    # The box: mmdetection's decode of its deltas from its anchors.
    s, (hl, wl) = cfg.strides[l], ltrb.shape[1:3]
    anchors = ref.anchor_boxes(hl, wl, s)
    d = nhwc(want_deltas)
    with torch.no_grad():
      want_box = torch.stack([ref.delta2bbox(anchors, torch.from_numpy(
          d[b].reshape(-1, 4))) for b in range(len(x))]).numpy()
    cy, cx = np.meshgrid(np.arange(hl) * s, np.arange(wl) * s, indexing="ij")
    ltrb = np.asarray(ltrb)
    box = np.stack([cx - ltrb[..., 0], cy - ltrb[..., 1],
                    cx + ltrb[..., 2], cy + ltrb[..., 3]], -1)
    close(box.reshape(want_box.shape), want_box, f"box P{l + 3}")
    beside += int((ltrb < 0).any(-1).sum())
  assert beside > 10, beside  # Boxes beside their location too.

  post = make_postprocess_fn(compute_locations(CANVAS, cfg), cfg)
  ours = jax.device_get(post(apply(variables, x), image_hw, orig_hw))
  # mmdetection scores prob x centre-ness, fcos_jax sqrt(prob x ctr): the
  # same ranking, the same detections.
  mmdet_dets = ref.postprocess_atss(head, model, image_hw.tolist(),
                                    orig_hw.tolist())
  dets = [(boxes, scores.sqrt(), labels)
          for boxes, scores, labels in mmdet_dets]
  # Anchor deltas move boxes off their locations: more of them (those of
  # the padding's locations) clip to nothing, dropped on both sides.
  _same_detections(ours, dets)
  # score_combine="product" reports mmdetection's scores themselves.
  product = cfg.replace(score_combine="product")
  post = make_postprocess_fn(compute_locations(CANVAS, product), product)
  ours = jax.device_get(post(apply(variables, x), image_hw, orig_hw))
  _same_detections(ours, mmdet_dets)


def test_atss_converts_and_refuses_bad_checkpoints():
  cfg = mmdet.published_config(ATSS, **SMALL)
  sd = random_mmdet_state_dict(cfg)
  params = mmdet.convert_state_dict({"meta": {}, "state_dict": sd},
                                    cfg)["params"]["head"]
  np.testing.assert_array_equal(
      params["box_regression"]["kernel"],
      sd["bbox_head.atss_reg.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["centerness"]["bias"],
                                sd["bbox_head.atss_centerness.bias"])
  np.testing.assert_array_equal(params["cls_logits"]["bias"],
                                sd["bbox_head.atss_cls.bias"])
  np.testing.assert_array_equal(params["box_norm_3"]["scale"],
                                sd["bbox_head.reg_convs.3.gn.weight"])
  np.testing.assert_array_equal(params["cls_tower_0"]["bias"], 0.0)
  assert params["scale_2"] == sd["bbox_head.scales.2.scale"]

  bad = dict(sd)
  del bad["bbox_head.atss_centerness.weight"]
  bad["bbox_head.atss_reg.weight"] = np.zeros((36, 64, 3, 3), np.float32)
  bad["bbox_head.gfl_reg.bias"] = np.zeros(68, np.float32)
  msg = _refused(bad, cfg)
  assert "fcos_jax ATSS (mmdetection layout)" in msg
  assert "1 missing: bbox_head.atss_centerness.weight" in msg
  assert "1 unexpected: bbox_head.gfl_reg.bias" in msg
  assert ("bbox_head.atss_reg.weight: got (36, 64, 3, 3), expected "
          "(4, 64, 3, 3)") in msg
  # A config that computes something else: the fields named.
  with pytest.raises(errors.ConfigError, match=r"box=DistanceBox"):
    mmdet.convert_state_dict(sd, cfg.replace(box={"name": "distances"}))
  with pytest.raises(errors.ConfigError, match=r"p7_relu=True \(needs False\)"):
    mmdet.convert_state_dict(sd, cfg.replace(p7_relu=True))
  with pytest.raises(errors.ConfigError, match=r"quality=IoUQuality"):
    mmdet.convert_state_dict(sd, cfg.replace(quality={"name": "iou"}))
  # A GFL checkpoint given for ATSS: the ATSS names it lacks are listed.
  gfl = mmdet.published_config(R50, **SMALL)
  with pytest.raises(errors.DataError, match="bbox_head.atss_cls.weight"):
    mmdet.convert_state_dict(random_mmdet_state_dict(gfl), cfg)
