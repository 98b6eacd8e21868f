"""TOOD's TAL assignment (fcos_jax/core/tal.py) against a NumPy brute force
written from mmdetection's TaskAlignedAssigner.assign and
TOODHead._get_target_single (per-box loops): random cases, nested boxes, a
box smaller than every stride, padded and crowd boxes; the warm-up switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.core import assign, atss, tal
from fcos_jax.core.locations import compute_locations
from fcos_jax.model import config as config_lib
from fcos_jax.model.outputs import HeadOutputs

C = 3
CANVAS = (64, 96)


def _cfg(**kw):
  return config_lib.tood(num_classes=C, fpn_channels=32, gn_groups=8,
                         head_convs=2, **kw)


def _iou(a, b):
  iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
  ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
  inter = iw * ih
  union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
           - inter)
  return inter / max(union, 1e-6)


def brute_force(points, scores, pred, boxes, labels, usable, topk, alpha,
                beta):
  """mmdetection's rule, one image, one box at a time (float64)."""
  num_points, m = len(points), len(boxes)
  iou = np.zeros((m, num_points))
  metric = np.zeros((m, num_points))
  positives = {}
  for g in range(m):
    if not usable[g]:
      continue
    for i in range(num_points):
      iou[g, i] = _iou(pred[i], boxes[g])
      metric[g, i] = scores[i, labels[g]] ** alpha * iou[g, i] ** beta
    order = sorted(range(num_points), key=lambda i: (-metric[g, i], i))
    x0, y0, x1, y1 = boxes[g]
    inside = lambda i: min(points[i][0] - x0, points[i][1] - y0,
                           x1 - points[i][0], y1 - points[i][1]) > 0.01
    positives[g] = [i for i in order[:min(topk, num_points)]
                    if metric[g, i] > 0 and inside(i)]
  assigned = np.full(num_points, -1)
  for i in range(num_points):
    best = -np.inf
    for g in sorted(positives):
      if i in positives[g] and iou[g, i] > best:
        best, assigned[i] = iou[g, i], g
  alignment = np.zeros(num_points)
  for g in positives:
    members = np.flatnonzero(assigned == g)
    if len(members):
      t_max = metric[g, members].max()
      u_max = iou[g, members].max()
      alignment[members] = metric[g, members] / (t_max + 1e-7) * u_max
  return assigned, alignment


def _random_predictions(rng, points, stride_of, spread=3.0):
  """Scores [P, C] in (0, 1) and predicted (l, t, r, b) pixel distances of
  about `spread` strides, some of them negative (a resampled box)."""
  scores = rng.uniform(0.01, 0.99, (len(points), C))
  ltrb = rng.uniform(-0.5, spread, (len(points), 4)) * stride_of[:, None]
  ltrb[:, 2] = np.maximum(ltrb[:, 2], 1.0 - ltrb[:, 0])  # width > 0
  ltrb[:, 3] = np.maximum(ltrb[:, 3], 1.0 - ltrb[:, 1])
  return scores.astype(np.float32), ltrb.astype(np.float32)


def _check(cfg, boxes, classes, valid, crowd, scores, ltrb):
  """Runs assign_tal on [B, ...] inputs and compares every image."""
  locations = compute_locations(CANVAS, cfg)
  tgt = jax.jit(lambda *a: tal.assign_tal(*a[:4], locations, cfg, *a[4:]))(
      boxes, classes, valid, crowd, scores, ltrb)
  points = np.asarray(locations.points, np.float64)
  a = cfg.assign
  total_pos = 0
  for b in range(boxes.shape[0]):
    pred = np.concatenate([points - ltrb[b, :, :2], points + ltrb[b, :, 2:]],
                          -1).astype(np.float64)
    want_index, want_align = brute_force(
        points, scores[b].astype(np.float64), pred, boxes[b].astype(np.float64),
        classes[b], valid[b] & ~crowd[b], a.topk, a.alpha, a.beta)
    np.testing.assert_array_equal(np.asarray(tgt.matched_index[b]), want_index)
    np.testing.assert_array_equal(np.asarray(tgt.positive[b]), want_index >= 0)
    pos = want_index >= 0
    np.testing.assert_array_equal(np.asarray(tgt.labels[b])[pos],
                                  classes[b][want_index[pos]])
    np.testing.assert_allclose(np.asarray(tgt.alignment[b]), want_align,
                               rtol=1e-4, atol=1e-7)
    box = boxes[b][want_index[pos]]
    want_ltrb = np.concatenate([points[pos] - box[:, :2],
                                box[:, 2:] - points[pos]], -1)
    np.testing.assert_allclose(np.asarray(tgt.reg_targets[b])[pos], want_ltrb,
                               rtol=1e-6, atol=1e-4)
    total_pos += pos.sum()
  assert not np.asarray(tgt.initial).any()
  return tgt, total_pos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tal_matches_brute_force_on_random_boxes(seed):
  cfg = _cfg()
  locations = compute_locations(CANVAS, cfg)
  rng = np.random.default_rng(seed)
  b, m = 2, 6
  xy = rng.uniform(0, [CANVAS[1], CANVAS[0]], (b, m, 2))
  wh = rng.uniform(4, 60, (b, m, 2))
  boxes = np.concatenate([xy - wh / 2, xy + wh / 2], -1).astype(np.float32)
  classes = rng.integers(0, C, (b, m)).astype(np.int32)
  valid = rng.uniform(size=(b, m)) < 0.85
  crowd = rng.uniform(size=(b, m)) < 0.1
  preds = [_random_predictions(rng, locations.points, locations.strides)
           for _ in range(b)]
  scores = np.stack([p[0] for p in preds])
  ltrb = np.stack([p[1] for p in preds])
  _, total_pos = _check(cfg, boxes, classes, valid, crowd, scores, ltrb)
  assert total_pos > 10  # A real test: many positives.


def test_tal_nested_tiny_and_padded_boxes():
  """A box inside another (the locations both claim go to the higher IoU),
  a box smaller than every stride between locations (no point inside: no
  positive), a box with exactly one point inside, and a padded box (never
  a candidate, whatever its coordinates)."""
  cfg = _cfg(topk=5)
  locations = compute_locations(CANVAS, cfg)
  points = np.asarray(locations.points)
  boxes = np.array([[[4, 4, 60, 60],      # big
                     [12, 12, 36, 36],    # nested in big
                     [49, 49, 55, 55],    # smaller than a stride, no point
                     [70, 20, 74, 26],    # holds exactly (72, 24)
                     [0, 0, 96, 64]]],    # padded
                   np.float32)
  classes = np.array([[0, 1, 2, 0, 1]], np.int32)
  valid = np.array([[True, True, True, True, False]])
  crowd = np.zeros_like(valid)
  # Predictions: every location predicts a box near the nested one, so
  # the nested box has the higher IoU where both claim a location.
  ltrb = np.stack([points[:, 0] - 14, points[:, 1] - 14, 34 - points[:, 0],
                   34 - points[:, 1]], -1)
  ltrb = np.where(np.abs(ltrb) < 1, 1.0, ltrb)
  ltrb[:, 2] = np.maximum(ltrb[:, 2], 1.0 - ltrb[:, 0])
  ltrb[:, 3] = np.maximum(ltrb[:, 3], 1.0 - ltrb[:, 1])
  one = np.flatnonzero((points[:, 0] == 72) & (points[:, 1] == 24))
  ltrb[one] = (3.0, 5.0, 3.0, 5.0)  # Overlaps the one-point box.
  rng = np.random.default_rng(5)
  scores = rng.uniform(0.2, 0.9, (len(points), C)).astype(np.float32)
  tgt, _ = _check(cfg, boxes, classes, valid, crowd, scores[None],
                  ltrb[None].astype(np.float32))
  index = np.asarray(tgt.matched_index[0])
  assert (index == 1).sum() > 0 and (index == 0).sum() > 0
  assert (index == 2).sum() == 0 and (index == 4).sum() == 0
  assert list(np.flatnonzero(index == 3)) == list(one)
  # Each box's best positive gets the box's best IoU as its target.
  align = np.asarray(tgt.alignment[0])
  assert np.all(align[index >= 0] > 0) and np.all(align[index < 0] == 0)
  # The padded box changes nothing: without it, the same targets.
  tgt2, _ = _check(cfg, boxes[:, :4], classes[:, :4], valid[:, :4],
                   crowd[:, :4], scores[None], ltrb[None].astype(np.float32))
  np.testing.assert_array_equal(np.asarray(tgt2.matched_index), index[None])


def test_warm_up_switches_from_atss_to_tal():
  cfg = _cfg(initial_steps=10, initial_topk=4)
  locations = compute_locations(CANVAS, cfg)
  rng = np.random.default_rng(3)
  boxes = np.array([[[8, 8, 50, 40], [40, 10, 90, 60]]], np.float32)
  classes = np.array([[1, 2]], np.int32)
  valid = np.ones((1, 2), bool)
  crowd = ~valid
  scores, ltrb = _random_predictions(rng, locations.points, locations.strides)
  outputs = HeadOutputs(
      cls_logits=jnp.log(scores / (1 - scores))[None],
      box_regression=jnp.asarray(ltrb)[None], centerness=None)
  run = jax.jit(lambda step: assign.assign(boxes, classes, valid, crowd,
                                           locations, cfg, outputs, step))
  want_atss = atss.assign_atss(boxes, classes, valid, crowd, locations, cfg,
                               topk=4, anchor_scale=8.0)
  want_tal = tal.assign_tal(boxes, classes, valid, crowd, locations, cfg,
                            scores[None], ltrb[None])
  for step, want, initial in ((0, want_atss, True), (9, want_atss, True),
                              (10, want_tal, False)):
    got = run(step)
    np.testing.assert_array_equal(got.matched_index, want.matched_index)
    assert bool(got.initial[0]) is initial
    want_align = (want.positive.astype(np.float32) if initial
                  else want.alignment)
    np.testing.assert_allclose(got.alignment, want_align, rtol=1e-6)
  assert not np.array_equal(want_atss.matched_index, want_tal.matched_index)
  # Without predictions (the analyses): the warm-up's ATSS.
  no_pred = assign.assign(boxes, classes, valid, crowd, locations, cfg)
  np.testing.assert_array_equal(no_pred.matched_index, want_atss.matched_index)
