"""AdelaiDet FCOS (detectron2 names) -> fcos_jax: names and shapes of the
released R-50, and outputs equal to the PyTorch restatement of the network
(tests/official_fcos_torch.py, detectron2's BN epsilon) whose state dict is
renamed here to detectron2's module names."""

import re

import jax
import numpy as np
import pytest

from fcos_jax.convert import adelaidet
from test_convert_official import SMALL, _apply, close, torch_model


@pytest.fixture(autouse=True)
def float32_convolutions():
  with jax.default_matmul_precision("highest"):
    yield


def test_published_r50_names_and_shapes():
  names = {k: s for k, (_, s) in adelaidet.state_dict_names(
      adelaidet.published_config("FCOS_R_50_1x")).items()}
  # Our shapes (HWIO kernels) of a few of detectron2's names.
  expect = {
      "backbone.bottom_up.stem.conv1.weight": (7, 7, 3, 64),
      "backbone.bottom_up.stem.conv1.norm.running_mean": (64,),
      "backbone.bottom_up.res2.0.shortcut.weight": (1, 1, 64, 256),
      "backbone.bottom_up.res2.0.shortcut.norm.bias": (256,),
      "backbone.bottom_up.res5.2.conv3.norm.weight": (2048,),
      "backbone.fpn_lateral3.weight": (1, 1, 512, 256),
      "backbone.fpn_output5.bias": (256,),
      "backbone.top_block.p7.weight": (3, 3, 256, 256),
      "proposal_generator.fcos_head.bbox_tower.10.bias": (256,),
      "proposal_generator.fcos_head.ctrness.weight": (3, 3, 256, 1),
      "proposal_generator.fcos_head.scales.0.scale": (),
  }
  for k, shape in expect.items():
    assert tuple(names[k]) == shape, k
  assert len(names) == 53 + 53 * 4 + 16 + 38 + 5
  x = {k: s for k, (_, s) in adelaidet.state_dict_names(
      adelaidet.published_config("FCOS_MS_X_101_32x8d_dcnv2_2x")).items()}
  assert x["backbone.bottom_up.res4.22.conv2.weight"] == (3, 3, 32, 1024)
  assert x["backbone.bottom_up.res4.22.conv2_offset.bias"] == (27,)
  assert x["backbone.bottom_up.res3.0.conv2.weight"] == (3, 3, 16, 512)
  assert "backbone.bottom_up.res3.0.conv2_offset.bias" not in x
  assert x["proposal_generator.fcos_head.cls_tower.9.offset.weight"] == (
      3, 3, 256, 27)
  cfg = adelaidet.published_config("FCOS_MS_R_101_2x", score_thresh=0.2)
  assert adelaidet.find_published(cfg) == "FCOS_MS_R_101_2x"
  assert (cfg.bn_eps, cfg.pixel_mean) == (1e-5, adelaidet.DETECTRON2_BGR_MEAN)


def to_detectron2_names(sd):
  """The restatement's maskrcnn-benchmark names -> AdelaiDet's, from
  detectron2's module layout (norm inside each conv, `shortcut`,
  `conv2_offset`, `fpn_lateral{3,4,5}`, `top_block`, `ctrness`)."""
  rules = [
      (r"^backbone\.body\.stem\.bn1\.", "backbone.body.stem.conv1.norm."),
      (r"^backbone\.body\.layer(\d)\.",
       lambda m: f"backbone.body.res{int(m[1]) + 1}."),
      (r"\.bn(\d)\.", r".conv\1.norm."),
      (r"\.downsample\.0\.", ".shortcut."),
      (r"\.downsample\.1\.", ".shortcut.norm."),
      (r"(res\d\.\d+)\.conv2\.conv\.", r"\1.conv2."),
      (r"(res\d\.\d+)\.conv2\.offset\.", r"\1.conv2_offset."),
      (r"^backbone\.body\.", "backbone.bottom_up."),
      (r"^backbone\.fpn\.fpn_inner(\d)",
       lambda m: f"backbone.fpn_lateral{int(m[1]) + 1}"),
      (r"^backbone\.fpn\.fpn_layer(\d)",
       lambda m: f"backbone.fpn_output{int(m[1]) + 1}"),
      (r"^backbone\.fpn\.top_blocks\.", "backbone.top_block."),
      (r"^rpn\.head\.centerness\.", "rpn.head.ctrness."),
      (r"^rpn\.head\.", "proposal_generator.fcos_head."),
  ]
  out = {}
  for k, v in sd.items():
    for pattern, repl in rules:
      k = re.sub(pattern, repl, k)
    out[k] = v
  return out


@pytest.mark.torch
@pytest.mark.parametrize("dcn", [False, True])
def test_outputs_match_restatement(dcn):
  torch = pytest.importorskip("torch")
  cfg = adelaidet.published_config(
      "FCOS_R_50_1x", **SMALL,
      **(dict(dcn_stages=(4, 5), head_dcn=True) if dcn else {}))
  _, model = torch_model(None, seed=11, cfg=cfg)
  sd = to_detectron2_names(model.state_dict())
  sd["pixel_mean"] = torch.tensor(cfg.pixel_mean).view(3, 1, 1)
  sd["pixel_std"] = torch.ones(3, 1, 1)
  variables = adelaidet.convert_state_dict({"model": sd}, cfg)
  # detectron2 pads to multiples of 32; its FPN upsamples by exactly 2.
  x = np.random.default_rng(1).normal(size=(1, 192, 256, 3)).astype(np.float32)
  with torch.no_grad():
    feats, _, (logits, boxes, ctr) = model(
        torch.from_numpy(x).permute(0, 3, 1, 2))
  _, levels_fn, backbone_fn = _apply(cfg)
  for k, (got, want) in enumerate(zip(backbone_fn(variables, x), feats)):
    close(got, want.permute(0, 2, 3, 1).numpy(), f"C{k + 3}")
  for l, (cls, reg, c) in enumerate(levels_fn(variables, x)):
    close(cls, logits[l].permute(0, 2, 3, 1).numpy(), f"cls P{l + 3}")
    close(np.asarray(reg) * cfg.strides[l],
          boxes[l].permute(0, 2, 3, 1).numpy(), f"reg P{l + 3}")
    close(c, ctr[l][:, 0].numpy(), f"ctr P{l + 3}")


@pytest.mark.torch
def test_refusals():
  torch = pytest.importorskip("torch")
  cfg = adelaidet.published_config("FCOS_R_50_1x", **SMALL)
  _, model = torch_model(None, seed=12, cfg=cfg)
  sd = to_detectron2_names(model.state_dict())
  bad_mean = dict(sd, pixel_mean=torch.tensor([102.9801, 115.9465, 122.7717]))
  with pytest.raises(ValueError, match="pixel_mean is .*102.98.*set "
                     "model.pixel_mean"):
    adelaidet.convert_state_dict(bad_mean, cfg)
  del sd["proposal_generator.fcos_head.ctrness.bias"]
  sd["backbone.bottom_up.res5.0.conv2_offset.weight"] = torch.zeros(27, 1)
  with pytest.raises(ValueError) as err:
    adelaidet.convert_state_dict(sd, cfg)
  msg = str(err.value)
  assert "1 missing: proposal_generator.fcos_head.ctrness.bias" in msg
  assert "1 unexpected: backbone.bottom_up.res5.0.conv2_offset.weight" in msg
  with pytest.raises(ValueError, match=r"bn_eps=0.0 \(needs 1e-05\)"):
    adelaidet.convert_state_dict(sd, cfg.replace(bn_eps=0.0))
