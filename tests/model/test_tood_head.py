"""TOOD's T-head (fcos_jax/model/tood_head.py) against a plain-PyTorch
restatement of mmdetection's TOODHead.forward (tests/tood_torch.py: torch +
torchvision.ops.deform_conv2d) with the same random weights; the score's
logit; the model's outputs and the preset's checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

import tood_torch
from random_params import random_head_params
from fcos_jax.errors import ConfigError
from fcos_jax.model import config as config_lib
from fcos_jax.model.fcos import FCOS, init_variables
from fcos_jax.model.tood_head import TOODHead, score_logit

C, F, GROUPS, N = 3, 32, 8, 3


def _cfg(**kw):
  return config_lib.tood(num_classes=C, fpn_channels=F, gn_groups=GROUPS,
                         head_convs=N, **kw)


def _random_params(cfg, x, seed):
  """Every parameter drawn at random; the offsets' last conv large enough
  to move the samples by about a cell."""
  def offsets(path, shape, rng):
    if path[0] == "reg_offset_module_2":
      return rng.normal(0, 0.5 if path[-1] == "bias" else 0.1, shape)
    return None
  return random_head_params(TOODHead(cfg), x, seed, offsets)


@pytest.mark.parametrize("level,num_dcn", [(0, 0), (2, 0), (1, 2)])
def test_tood_head_matches_mmdetection_forward(level, num_dcn):
  """num_dcn=2: the dconv models' DCNv2 inter convs (4 deformable groups,
  offsets and masks from random weights)."""
  cfg = _cfg(num_dcn=num_dcn)
  rng = np.random.default_rng(level)
  x = rng.normal(0, 1, (2, 10, 13, F)).astype(np.float32)
  params = _random_params(cfg, x, seed=level + 1)
  if num_dcn:
    assert params["inter_convs_1"]["offset"]["kernel"].shape == (
        3, 3, F, 4 * 3 * 9)
    assert "inter_convs_2" in params and "offset" not in params[
        "inter_convs_2"]
  head = tood_torch.TOODHead(C, F, N, GROUPS, num_dcn=num_dcn)
  tood_torch.load_flax_head(head, params)
  with torch.no_grad():
    score, bbox = head.forward_level(torch.tensor(x.transpose(0, 3, 1, 2)),
                                     level)
  score = score.numpy().transpose(0, 2, 3, 1)
  bbox = bbox.numpy().transpose(0, 2, 3, 1)                # Strides, xyxy.
  s = cfg.strides[level]
  h, w = x.shape[1:3]
  cy, cx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  want_ltrb = np.stack([cx - bbox[..., 0], cy - bbox[..., 1],
                        bbox[..., 2] - cx, bbox[..., 3] - cy], -1) * s

  got_logit, got_ltrb = jax.jit(
      lambda p: TOODHead(cfg).apply({"params": p}, x, level))(params)
  got_score = jax.nn.sigmoid(got_logit)
  np.testing.assert_allclose(got_score, score, rtol=0,
                             atol=1e-4 * np.abs(score).max())
  np.testing.assert_allclose(got_ltrb, want_ltrb, rtol=0,
                             atol=1e-4 * np.abs(want_ltrb).max())
  # A real test of the sampling: offsets of about a cell, boxes that
  # differ from the unsampled ones and some that fall off the map edge.
  assert 0.2 < np.median(np.abs(want_ltrb)) / s < 30
  assert np.mean(score) > 0.05


def test_score_logit_is_the_logit_of_the_score():
  a = np.array([-60.0, -8.0, -1.0, 0.0, 0.5, 3.0, 12.0, 30.0], np.float32)
  b = np.array([2.0, -3.0, 4.0, 0.0, -0.5, 9.0, 15.0, 25.0], np.float32)
  want = np.sqrt(1 / (1 + np.exp(-a.astype(np.float64)))
                 * 1 / (1 + np.exp(-b.astype(np.float64))))
  got = score_logit(a, b)
  np.testing.assert_allclose(jax.nn.sigmoid(got), want, rtol=1e-6)
  # Near p = 1 the logit stays finite and ordered (no rounding to 1).
  logit = np.log(want) - np.log1p(-want)
  np.testing.assert_allclose(got[:6], logit[:6], rtol=1e-5, atol=1e-5)
  assert np.all(np.isfinite(got)) and got[-1] > got[-2] > 10
  grads = jax.grad(lambda a, b: score_logit(a, b).sum(), (0, 1))(a, b)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_model_outputs_and_preset_checks():
  cfg = _cfg(depth=18, width=8, freeze_at=0, backbone_norm="gn")
  variables = init_variables(cfg, jax.random.PRNGKey(0))
  images = jnp.zeros((1, 64, 96, 3))
  out = jax.jit(lambda v: FCOS(cfg).apply(v, images))(variables)
  p = 8 * 12 + 4 * 6 + 2 * 3 + 1 * 2 + 1 * 1
  assert out.cls_logits.shape == (1, p, C)
  assert out.box_regression.shape == (1, p, 4) and out.centerness is None
  # Initial score: the prior 0.01 (sqrt(0.01 * 0.01)).
  np.testing.assert_allclose(jax.nn.sigmoid(out.cls_logits).mean(), 0.01,
                             rtol=0.1)
  # Every parameter has an optimizer group; the GN scales are "norm".
  from fcos_jax.train.param_groups import param_labels
  labels = traverse_util.flatten_dict(param_labels(variables["params"], cfg))
  head = {k[1:]: v for k, v in labels.items() if k[0] == "head"}
  assert head[("inter_norm_0", "scale")] == "norm"
  assert head[("cls_decomp", "reduction_norm", "scale")] == "norm"
  assert head[("reg_offset_module_2", "bias")] == "bias"
  assert head[("scale_0",)] == "weight"
  tood = config_lib.tood()
  assert (tood.assign.topk, tood.assign.alpha, tood.assign.beta,
          tood.assign.initial_topk, tood.head_convs, tood.loss.giou_weight,
          tood.p7_relu, tood.location_offset) == (
              13, 1.0, 6.0, 9, 6, 2.0, False, "zero")
  with pytest.raises(ConfigError, match="go together"):
    config_lib.tood(loss=config_lib.FCOSLoss())
  with pytest.raises(ConfigError, match="go together"):
    config_lib.atss(quality=config_lib.TOODQuality())
  with pytest.raises(ConfigError, match="norm_reg_targets"):
    config_lib.tood(norm_reg_targets=True)
  with pytest.raises(ConfigError, match="initial_steps"):
    config_lib.tood(initial_steps=-1)
  with pytest.raises(ConfigError, match="needs location_stride='nominal'"):
    config_lib.tood(location_stride="canvas")
  with pytest.raises(ConfigError, match="num_dcn=7"):
    config_lib.tood(num_dcn=7)
  with pytest.raises(ConfigError, match="dcn_groups=3"):
    config_lib.tood(num_dcn=2, dcn_groups=3)
