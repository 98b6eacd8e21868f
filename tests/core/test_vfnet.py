"""VFNet: Varifocal Loss and the whole VFNet loss against a PyTorch
restatement of mmdetection's varifocal_loss / VFNetHead.loss_by_feat
(tests/vfnet_torch.py), values and gradients; the star offsets on a
hand-computed box; the preset and its checks; post-processing on the
refined box without centre-ness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vfnet_torch
from fcos_jax.core import losses, postprocess, vfnet
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.targets import Targets
from fcos_jax.errors import ConfigError
from fcos_jax.model import config as config_lib
from fcos_jax.model.outputs import HeadOutputs
from fcos_jax.model.vfnet_head import star_offsets


# --- Varifocal Loss, elementwise ----------------------------------------------

@pytest.mark.parametrize("case", ["mixed", "all_zero", "all_positive"])
@pytest.mark.parametrize("iou_weighted", [True, False])
def test_varifocal_loss_against_mmdetection(case, iou_weighted):
  rng = np.random.default_rng(hash((case, iou_weighted)) % 2**32)
  x = rng.normal(0, 3, (64, 7)).astype(np.float32)
  y = rng.uniform(0.0, 1.0, x.shape).astype(np.float32)
  if case == "mixed":
    y = np.where(rng.uniform(size=x.shape) < 0.7, 0.0, y).astype(np.float32)
  elif case == "all_zero":
    y = np.zeros_like(x)
  else:
    y = np.maximum(y, 1e-6).astype(np.float32)
  tx = torch.tensor(x, requires_grad=True)
  want = vfnet_torch.varifocal_loss(tx, torch.tensor(y), 0.75, 2.0,
                                    iou_weighted)
  want.sum().backward()
  got, grad = jax.value_and_grad(
      lambda v: vfnet.varifocal_loss(v, y, 0.75, 2.0, iou_weighted).sum())(x)
  np.testing.assert_allclose(
      vfnet.varifocal_loss(x, y, 0.75, 2.0, iou_weighted),
      want.detach().numpy(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got, float(want.sum().detach()), rtol=1e-5)
  np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_varifocal_loss_hand_values():
  # Negative (y = 0): alpha * p^2 * -log(1 - p); positive: y * BCE(x, y).
  p = 1 / (1 + np.exp(-1.0))
  got = vfnet.varifocal_loss(np.float32([1.0, 1.0]), np.float32([0.0, 0.5]))
  np.testing.assert_allclose(got[0], 0.75 * p**2 * -np.log(1 - p), rtol=1e-6)
  np.testing.assert_allclose(
      got[1], 0.5 * -(0.5 * np.log(p) + 0.5 * np.log(1 - p)), rtol=1e-6)


# --- The VFNet loss ------------------------------------------------------------

def _cfg(**kw):
  return config_lib.vfnet(num_classes=5, **kw)


def _random_problem(cfg, seed, canvas=(64, 96), b=2, positive_rate=0.2):
  rng = np.random.default_rng(seed)
  loc = compute_locations(canvas, cfg)
  p, c = loc.num_locations, cfg.num_classes
  cls = rng.normal(-2, 2, (b, p, c)).astype(np.float32)
  positive = rng.uniform(size=(b, p)) < positive_rate
  labels = rng.integers(0, c, (b, p)).astype(np.int32)
  strides = np.asarray(loc.strides, np.float32)[None, :, None]
  reg = (rng.uniform(0.2, 12, (b, p, 4)) * strides).astype(np.float32)
  reg = np.where(positive[..., None], reg, 0.0).astype(np.float32)
  # Predictions around the targets (some far off), positive everywhere.
  base = np.where(positive[..., None], reg, strides * 4)
  init = (base * np.exp(rng.normal(0, 0.5, (b, p, 4)))).astype(np.float32)
  refine = (base * np.exp(rng.normal(0, 0.3, (b, p, 4)))).astype(np.float32)
  tgt = Targets(labels=jnp.asarray(labels), positive=jnp.asarray(positive),
                reg_targets=jnp.asarray(reg),
                centerness=jnp.zeros((b, p), jnp.float32),
                matched_index=jnp.where(positive, 0, -1).astype(jnp.int32))
  return loc, cls, init, refine, tgt


def _ours(cls, init, refine, tgt, loc, cfg):
  out = HeadOutputs(cls_logits=cls, box_regression=refine, centerness=None,
                    box_initial=init)
  return losses.fcos_loss(out, tgt, loc, cfg)  # Dispatches on loss.name.


def _reference(cls, init, refine, tgt, loc, cfg):
  b, p, c = cls.shape
  t = [torch.tensor(a.reshape(b * p, -1), requires_grad=True)
       for a in (cls, init, refine)]
  pos = np.asarray(tgt.positive).reshape(-1)
  labels = torch.tensor(np.where(pos, np.asarray(tgt.labels).reshape(-1), c))
  points = torch.tensor(np.tile(np.asarray(loc.points), (b, 1)))
  reg = torch.tensor(np.asarray(tgt.reg_targets).reshape(-1, 4))
  lc = cfg.loss
  want = vfnet_torch.vfnet_loss(*t, labels, reg, points, lc.vfl_alpha,
                                lc.vfl_gamma, lc.iou_weighted, lc.giou_weight,
                                lc.giou_refine_weight)
  sum(want).backward()
  return [float(w.detach()) for w in want], [x.grad.numpy() for x in t]


@pytest.mark.parametrize("seed,rate", [(0, 0.2), (1, 0.2), (2, 1.0)])
def test_vfnet_loss_against_mmdetection_values_and_gradients(seed, rate):
  cfg = _cfg()
  loc, cls, init, refine, tgt = _random_problem(cfg, seed,
                                                positive_rate=rate)
  want, want_grads = _reference(cls, init, refine, tgt, loc, cfg)
  (total, metrics), grads = jax.value_and_grad(
      lambda *a: _ours(*a, tgt, loc, cfg), argnums=(0, 1, 2),
      has_aux=True)(cls, init, refine)
  for key, w in zip(("loss_cls", "loss_reg", "loss_reg_refine"), want):
    np.testing.assert_allclose(metrics[key], w, rtol=2e-5, err_msg=key)
  np.testing.assert_allclose(total, sum(want), rtol=2e-5)
  assert metrics["num_pos"] == np.asarray(tgt.positive).sum()
  for name, g, w in zip(("cls", "init", "refine"), grads, want_grads):
    scale = np.abs(w).max()
    np.testing.assert_allclose(g.reshape(w.shape), w, rtol=1e-4,
                               atol=1e-5 * scale, err_msg=name)


def test_vfnet_loss_no_positives_is_finite_and_matches():
  cfg = _cfg()
  loc, cls, init, refine, tgt = _random_problem(cfg, 3, positive_rate=0.0)
  want, want_grads = _reference(cls, init, refine, tgt, loc, cfg)
  (total, m), g = jax.value_and_grad(
      lambda x: _ours(x, init, refine, tgt, loc, cfg), has_aux=True)(cls)
  assert np.isfinite(total) and np.all(np.isfinite(g))
  assert float(m["loss_reg"]) == 0.0 and float(m["loss_reg_refine"]) == 0.0
  np.testing.assert_allclose(m["loss_cls"], want[0], rtol=2e-5)
  np.testing.assert_allclose(g.reshape(want_grads[0].shape), want_grads[0],
                             rtol=1e-4, atol=1e-9)


def test_vfnet_loss_needs_the_initial_box():
  cfg = _cfg()
  loc, cls, _, refine, tgt = _random_problem(cfg, 4)
  with pytest.raises(ValueError, match="box_initial"):
    _ours(cls, None, refine, tgt, loc, cfg)


# --- Star offsets ----------------------------------------------------------------

def test_star_offsets_hand_computed():
  # Box (l, t, r, b) = (16, 8, 24, 32) px at stride 8: (2, 1, 3, 4) cells.
  # Tap (ky, kx) samples row (-t, 0, b)[ky], column (-l, 0, r)[kx], less
  # its own place (ky - 1, kx - 1); pairs (dy, dx) in tap order 3 ky + kx.
  # Rows (-1, 0, 4) - (-1, 0, 1) = (0, 0, 3); columns (-2, 0, 3) - (-1, 0,
  # 1) = (-1, 0, 2).
  box = np.float32([16, 8, 24, 32])
  want = [0, -1, 0, 0, 0, 2,   # ky = 0: top-left, top-centre, top-right
          0, -1, 0, 0, 0, 2,   # ky = 1: the centre row
          3, -1, 3, 0, 3, 2]   # ky = 2: the bottom row
  np.testing.assert_allclose(star_offsets(box, 8.0), want, rtol=0, atol=1e-6)
  # Against mmdetection's star_dcn_offset ([N, 4, H, W] -> [N, 18, H, W]).
  ref = vfnet_torch.VFNetHead(1, 32).star_dcn_offset(
      torch.tensor(box).view(1, 4, 1, 1), 0.1, 8)
  np.testing.assert_allclose(ref.numpy().reshape(-1), want, atol=1e-6)
  # The gradient to the box is scaled by gradient_mul / stride: d dx of
  # tap 0 (= -l/s + 1) / dl = -0.1 / 8.
  grad = jax.grad(lambda bx: star_offsets(bx, 8.0, 0.1)[1])(box)
  np.testing.assert_allclose(grad, [-0.1 / 8, 0, 0, 0], rtol=1e-6)


# --- Config and post-processing --------------------------------------------------

def test_vfnet_preset_and_config_checks():
  cfg = config_lib.vfnet()
  assert (cfg.quality.name, cfg.loss.name, cfg.assign.name) == (
      "vfnet", "vfnet", "atss")
  assert cfg.quality.gradient_mul == 0.1 and cfg.quality.bbox_norm == "reg_denom"
  lc = cfg.loss
  assert (lc.vfl_alpha, lc.vfl_gamma, lc.iou_weighted, lc.giou_weight,
          lc.giou_refine_weight) == (0.75, 2.0, True, 1.5, 2.0)
  assert cfg.head_convs == 3 and not cfg.norm_reg_targets
  assert cfg.location_offset == "zero" and cfg.assign.topk == 9
  assert (cfg.inference.nms_iou, cfg.inference.score_thresh,
          cfg.inference.pre_nms_topk) == (0.6, 0.05, 1000)
  assert config_lib.ModelConfig.from_dict({"preset": "vfnet"}) == cfg
  assert config_lib.ModelConfig.from_dict(
      {"preset": "vfnet", "gradient_mul": 0.2}).quality.gradient_mul == 0.2
  with pytest.raises(ConfigError, match="go together"):
    config_lib.official(loss={"name": "vfnet"})
  with pytest.raises(ConfigError, match="go together"):
    config_lib.vfnet(loss={"name": "fcos"})
  with pytest.raises(ConfigError, match="norm_reg_targets=False"):
    config_lib.vfnet(norm_reg_targets=True)
  with pytest.raises(ConfigError, match="gradient_mul"):
    config_lib.vfnet(gradient_mul=2.0)
  with pytest.raises(ConfigError, match="bbox_norm"):
    config_lib.vfnet(bbox_norm="pixels")


def test_vfnet_postprocess_scores_and_refined_boxes():
  """Score = sigmoid(cls) (no centre-ness, no sqrt); boxes from the refined
  box in pixels, not the initial one."""
  cfg = _cfg(score_thresh=0.3, nms_iou=0.99)
  loc, cls, init, refine, _ = _random_problem(cfg, 5, canvas=(64, 64))
  out = HeadOutputs(cls_logits=cls, box_regression=refine, centerness=None,
                    box_initial=init)
  hw = jnp.asarray([[64, 64], [64, 64]], jnp.int32)
  dets = postprocess.postprocess(out, loc, hw, hw, cfg,
                                 with_locations=True)
  prob = 1 / (1 + np.exp(-cls.astype(np.float64)))
  points = np.asarray(loc.points, np.float64)
  for i in range(2):
    k = int(dets["valid"][i].sum())
    assert k > 0
    where = np.asarray(dets["locations"][i][:k])
    classes = np.asarray(dets["classes"][i][:k])
    np.testing.assert_allclose(dets["scores"][i][:k],
                               prob[i, where, classes], rtol=1e-5)
    d = refine[i, where].astype(np.float64)
    x, y = points[where, 0], points[where, 1]
    box = np.clip(np.stack([x - d[:, 0], y - d[:, 1], x + d[:, 2],
                            y + d[:, 3]], -1), 0, 64)
    np.testing.assert_allclose(dets["boxes"][i][:k], box, rtol=1e-5,
                               atol=1e-3)
