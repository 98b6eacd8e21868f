"""TOOD's loss (fcos_jax/core/tood.py) against a PyTorch restatement of
mmdetection's TOODHead.loss_single / loss (tests/tood_torch.py: QFL and
focal loss on probabilities, GIoU in strides, alignment or centre-ness
weights and their normalisers), values and gradients, after and during
the warm-up; GIoU of boxes that miss their point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import tood_torch
from fcos_jax.core import losses, tood
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.targets import Targets
from fcos_jax.model import config as config_lib
from fcos_jax.model.outputs import HeadOutputs

C = 4
CANVAS = (64, 96)


def _case(seed, initial, num_pos_frac=0.25):
  cfg = config_lib.tood(num_classes=C, fpn_channels=32, gn_groups=8)
  loc = compute_locations(CANVAS, cfg)
  rng = np.random.default_rng(seed)
  b, p = 2, loc.num_locations
  s = np.asarray(loc.strides)[None, :, None]
  logits = rng.normal(-2, 2, (b, p, C)).astype(np.float32)
  pred = rng.uniform(-0.5, 3, (b, p, 4)) * s
  pred[..., 2] = np.maximum(pred[..., 2], 0.2 * s[..., 0] - pred[..., 0])
  pred[..., 3] = np.maximum(pred[..., 3], 0.2 * s[..., 0] - pred[..., 1])
  positive = rng.uniform(size=(b, p)) < num_pos_frac
  labels = np.where(positive, rng.integers(0, C, (b, p)), 0).astype(np.int32)
  reg = np.where(positive[..., None], rng.uniform(0.3, 4, (b, p, 4)) * s, 0.0)
  l, t, r, bt = (np.where(positive, reg[..., k], 1.0) for k in range(4))
  ctr = np.where(positive, np.sqrt(np.minimum(l, r) / np.maximum(l, r)
                                   * np.minimum(t, bt) / np.maximum(t, bt)), 0)
  align = (positive.astype(np.float32) if initial else
           np.where(positive, rng.uniform(0.01, 0.9, (b, p)), 0.0))
  tgt = Targets(
      labels=jnp.asarray(labels), positive=jnp.asarray(positive),
      reg_targets=jnp.asarray(reg, jnp.float32),
      centerness=jnp.asarray(ctr, jnp.float32),
      matched_index=jnp.asarray(np.where(positive, 0, -1), jnp.int32),
      alignment=jnp.asarray(align, jnp.float32),
      initial=jnp.full((b,), initial))
  return cfg, loc, logits, pred.astype(np.float32), tgt


def _torch_loss(cfg, loc, logits, pred, tgt, initial):
  points = np.asarray(loc.points, np.float64)
  strides = torch.tensor(np.tile(np.asarray(loc.strides), 2))
  pts = np.tile(points, (2, 1))
  x = torch.tensor(logits.reshape(-1, C), dtype=torch.float64,
                   requires_grad=True)
  d = torch.tensor(pred.reshape(-1, 4), dtype=torch.float64,
                   requires_grad=True)
  pt = torch.tensor(pts)
  bbox_pred = torch.stack([pt[:, 0] - d[:, 0], pt[:, 1] - d[:, 1],
                           pt[:, 0] + d[:, 2], pt[:, 1] + d[:, 3]],
                          -1) / strides[:, None]
  positive = np.asarray(tgt.positive).reshape(-1)
  labels = torch.tensor(np.where(positive, np.asarray(tgt.labels).reshape(-1),
                                 C).astype(np.int64))
  reg = np.asarray(tgt.reg_targets, np.float64).reshape(-1, 4)
  bbox_targets = torch.tensor(np.concatenate([pts - reg[:, :2],
                                              pts + reg[:, 2:]], -1))
  half = 4 * strides[:, None].double()
  anchors = torch.cat([pt - half, pt + half], -1)
  align = torch.tensor(np.asarray(tgt.alignment, np.float64).reshape(-1))
  lc = cfg.loss
  loss_cls, loss_bbox = tood_torch.tood_loss(
      anchors, x.sigmoid(), bbox_pred, labels, bbox_targets, align,
      strides.double(), initial, lc.qfl_beta, lc.giou_weight,
      lc.focal_alpha, lc.focal_gamma)
  (loss_cls + loss_bbox).backward()
  return (loss_cls.item(), loss_bbox.item(),
          x.grad.numpy().reshape(logits.shape),
          d.grad.numpy().reshape(pred.shape))


@pytest.mark.parametrize("initial", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_tood_loss_matches_mmdetection(seed, initial):
  cfg, loc, logits, pred, tgt = _case(seed, initial)
  # initial_steps > 0 keeps both losses in the graph, selected by
  # targets.initial (the training configuration).
  cfg = cfg.replace(initial_steps=5)

  def loss_fn(x, d):
    out = HeadOutputs(cls_logits=x, box_regression=d, centerness=None)
    total, m = losses.fcos_loss(out, tgt, loc, cfg)
    return total, m

  (total, m), (gx, gd) = jax.jit(jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True))(logits, pred)
  want_cls, want_reg, want_gx, want_gd = _torch_loss(cfg, loc, logits, pred,
                                                     tgt, initial)
  np.testing.assert_allclose(m["loss_cls"], want_cls, rtol=2e-5)
  np.testing.assert_allclose(m["loss_reg"], want_reg, rtol=2e-5)
  np.testing.assert_allclose(total, want_cls + want_reg, rtol=2e-5)
  assert float(m["initial"]) == float(initial)
  np.testing.assert_allclose(gx, want_gx, rtol=0,
                             atol=1e-4 * np.abs(want_gx).max())
  np.testing.assert_allclose(gd, want_gd, rtol=0,
                             atol=1e-4 * np.abs(want_gd).max())
  # Some predicted boxes miss their point: the clamped intersection matters.
  assert (pred < 0).any() and float(m["num_pos"]) > 20


def test_no_positives_and_no_warm_up_graph():
  cfg, loc, logits, pred, tgt = _case(3, False, num_pos_frac=0.0)
  out = HeadOutputs(cls_logits=jnp.asarray(logits),
                    box_regression=jnp.asarray(pred), centerness=None)
  total, m = tood.tood_loss(out, tgt, loc, cfg)
  assert float(m["loss_reg"]) == 0.0 and float(m["num_pos"]) == 0.0
  # Only negatives: QFL's sum sigmoid(x)^2 BCE(x, 0), over max(0, 1) = 1.
  p = jax.nn.sigmoid(logits.astype(np.float64))
  want = np.sum(-np.log1p(-p) * p ** 2)
  np.testing.assert_allclose(total, want, rtol=1e-4)


def test_giou_of_boxes_missing_the_point():
  """(l, t, r, b) from a point: a box entirely right of it (l < 0) against
  one around it; hand-computed."""
  pred = np.array([[-2.0, 1.0, 4.0, 1.0]])    # x in [2, 4], y in [-1, 1]
  target = np.array([[1.0, 1.0, 3.0, 1.0]])   # x in [-1, 3], y in [-1, 1]
  inter, union, enclose = 1 * 2, 2 * 2 + 4 * 2 - 2, 5 * 2
  want = inter / union - (enclose - union) / enclose
  np.testing.assert_allclose(tood.giou_ltrb(pred, target), [want], rtol=1e-6)
  apart = np.array([[-5.0, 1.0, 6.0, 1.0]])   # x in [5, 6]: no overlap
  want = 0 - (7 * 2 - (2 + 8)) / (7 * 2)
  np.testing.assert_allclose(tood.giou_ltrb(apart, target), [want], rtol=1e-6)
