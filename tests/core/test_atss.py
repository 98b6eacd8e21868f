"""ATSS assignment (core/atss.py) against a NumPy brute force written from
sfzhang15/ATSS `ATSSLossComputation.prepare_targets` (POSITIVE_TYPE 'ATSS'):
the IoU and distance matrices over all (anchor, box) pairs, per-level top-k
by sorting, mean + unbiased std, centre-in-box, then the highest IoU."""

import jax
import numpy as np
import pytest

from fcos_jax.core import assign
from fcos_jax.core.atss import assign_atss
from fcos_jax.core.locations import compute_locations
from fcos_jax.model import config as config_lib

INF = 100000000.0
CANVAS = (96, 128)  # P7 is 1 x 1, P6 2 x 1: levels with fewer than k points.


def _cfg(**kw):
  return config_lib.atss(num_classes=5, **kw)


def _iou_matrix(a, b):
  """[A, 4] x [G, 4] -> [A, G], continuous convention."""
  ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2])
               - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
  iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3])
               - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
  inter = ix * iy
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  return inter / (area_a[:, None] + area_b[None, :] - inter)


def reference_atss(boxes, classes, valid, crowd, locations, topk, scale):
  """One image: (labels, positive, matched_index, reg_targets) of [P]."""
  pts = locations.points.astype(np.float64)
  strides = locations.strides.astype(np.float64)
  num = pts.shape[0]
  keep = np.flatnonzero(valid & ~crowd)  # crowd boxes dropped, as the dataset
  labels = np.zeros(num, np.int64)
  matched = np.full(num, -1)
  reg = np.zeros((num, 4))
  if keep.size == 0:
    return labels, matched >= 0, matched, reg
  gt = boxes[keep].astype(np.float64)
  half = (scale * strides / 2)[:, None]
  anchors = np.concatenate([pts - half, pts + half], 1)
  ious = _iou_matrix(anchors, gt)                                 # [A, G]
  gt_points = (gt[:, :2] + gt[:, 2:]) / 2
  distances = np.sqrt(((pts[:, None] - gt_points[None]) ** 2).sum(-1))
  candidate_idxs = []
  for level in range(len(locations.level_sizes)):
    sl = locations.level_slice(level)
    d = distances[sl]
    k = min(topk, d.shape[0])
    candidate_idxs.append(np.argsort(d, axis=0, kind="stable")[:k] + sl.start)
  candidate_idxs = np.concatenate(candidate_idxs, 0)              # [K, G]
  g_range = np.arange(len(keep))
  candidate_ious = ious[candidate_idxs, g_range]
  thresh = candidate_ious.mean(0) + candidate_ious.std(0, ddof=1)
  is_pos = candidate_ious >= thresh[None]
  cx, cy = pts[candidate_idxs, 0], pts[candidate_idxs, 1]
  ltrb = np.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx,
                   gt[:, 3] - cy], 1)
  is_pos &= ltrb.min(1) > 0.01
  ious_inf = np.full((len(keep), num), -INF)
  for g in range(len(keep)):
    for i in candidate_idxs[is_pos[:, g], g]:
      ious_inf[g, i] = ious[i, g]
  best = ious_inf.max(0)
  winner = ious_inf.argmax(0)  # the first maximum, as torch's max
  pos = best != -INF
  matched[pos] = keep[winner[pos]]
  labels[pos] = classes[matched[pos]]
  b = boxes[matched[pos]].astype(np.float64)
  reg[pos] = np.stack([pts[pos, 0] - b[:, 0], pts[pos, 1] - b[:, 1],
                       b[:, 2] - pts[pos, 0], b[:, 3] - pts[pos, 1]], 1)
  return labels, pos, matched, reg


def _check(boxes, classes, valid, crowd, cfg=None, canvas=CANVAS):
  cfg = cfg or _cfg()
  locations = compute_locations(canvas, cfg)
  got = jax.jit(lambda *a: assign.assign(*a, locations, cfg))(
      boxes, classes, valid, crowd)
  for i in range(boxes.shape[0]):
    labels, pos, matched, reg = reference_atss(
        boxes[i], classes[i], valid[i], crowd[i], locations,
        cfg.assign.topk, cfg.assign.anchor_scale)
    np.testing.assert_array_equal(np.asarray(got.positive[i]), pos)
    np.testing.assert_array_equal(np.asarray(got.matched_index[i]), matched)
    np.testing.assert_array_equal(np.asarray(got.labels[i]), labels)
    np.testing.assert_allclose(np.asarray(got.reg_targets[i]), reg,
                               rtol=1e-6, atol=1e-4)
    l, t, r, b = reg[pos].T
    ctr = np.sqrt(np.minimum(l, r) / np.maximum(l, r)
                  * np.minimum(t, b) / np.maximum(t, b))
    np.testing.assert_allclose(np.asarray(got.centerness[i])[pos], ctr,
                               rtol=1e-5)
    assert not np.asarray(got.centerness[i])[~pos].any()
  return got


def _random_boxes(rng, num_images, num_boxes, canvas=CANVAS):
  h, w = canvas
  x0 = rng.uniform(-10, w - 4, (num_images, num_boxes))
  y0 = rng.uniform(-10, h - 4, (num_images, num_boxes))
  bw = np.exp(rng.uniform(np.log(2), np.log(1.5 * w), x0.shape))
  bh = bw * np.exp(rng.uniform(-1, 1, x0.shape))
  return np.stack([x0, y0, x0 + bw, y0 + bh], -1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_images_match_reference(seed):
  rng = np.random.default_rng(seed)
  boxes = _random_boxes(rng, 4, 12)
  classes = rng.integers(0, 5, (4, 12)).astype(np.int32)
  valid = rng.random((4, 12)) < 0.85
  crowd = rng.random((4, 12)) < 0.1
  got = _check(boxes, classes, valid, crowd)
  assert int(got.positive.sum()) > 20  # the cases do assign something


def test_hand_built_cases():
  boxes = np.array([
      # Nested boxes: a small one in a corner of a big one, and one around
      # the big one's centre, which loses its locations to the big box
      # (same candidates, the big box's anchor IoUs are higher).
      [[10, 10, 90, 80], [15, 15, 35, 35], [40, 35, 60, 55], [0, 0, 1, 1],
       [0, 0, 1, 1]],
      # Boxes smaller than every stride: one around the P3 location
      # (52, 44), one between locations; a crowd box over them; a box; a
      # padded slot.
      [[50.7, 42.9, 53.1, 45.3], [50.3, 40.2, 52.9, 42.6], [30, 20, 100, 90],
       [5, 5, 40, 40], [0, 0, 0, 0]],
      # An image with no boxes at all (every slot padding).
      [[0, 0, 0, 0]] * 5,
  ], np.float32)
  classes = np.array([[1, 2, 3, 0, 0], [3, 4, 2, 1, 0], [0] * 5], np.int32)
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0] * 5], bool)
  crowd = np.array([[0] * 5, [0, 0, 1, 0, 0], [0] * 5], bool)
  got = _check(boxes, classes, valid, crowd)
  matched = np.asarray(got.matched_index)
  assert {0, 1} <= set(matched[0].tolist()) and 2 not in matched[0]
  # The tiny box gets its one inside location; the one with no location
  # inside gets none; crowd and padding never match.
  assert (matched[1] == 0).sum() == 1 and 1 not in matched[1]
  assert 3 in matched[1] and 2 not in matched[1] and 4 not in matched[1]
  # The empty image is all background.
  assert (matched[2] == -1).all() and not np.asarray(got.positive[2]).any()


def test_p2_levels_and_class_agnostic():
  cfg = config_lib.with_p2(_cfg())
  rng = np.random.default_rng(5)
  boxes = _random_boxes(rng, 2, 6)
  classes = rng.integers(0, 5, (2, 6)).astype(np.int32)
  valid = np.ones((2, 6), bool)
  _check(boxes, classes, valid, ~valid, cfg=cfg)
  agnostic = config_lib.atss(num_classes=1, class_agnostic=True)
  locations = compute_locations(CANVAS, agnostic)
  got = assign_atss(boxes, classes, valid, ~valid, locations, agnostic)
  assert np.asarray(got.positive).any()
  assert not np.asarray(got.labels).any()


def test_dispatch_keeps_fcos_rule():
  """cfg.assign.name picks the rule: FCOS configs keep assign_targets."""
  from fcos_jax.core import targets
  assert assign.ASSIGN_FUNCTIONS["fcos"] is targets.assign_targets
  assert assign.ASSIGN_FUNCTIONS["atss"] is assign_atss
  assert set(assign.ASSIGN_FUNCTIONS) == set(config_lib.ASSIGNERS)


def test_bad_shapes_raise():
  cfg = _cfg()
  locations = compute_locations(CANVAS, cfg)
  with pytest.raises(ValueError, match="M >= 1"):
    assign_atss(np.zeros((1, 0, 4), np.float32), np.zeros((1, 0), np.int32),
                np.zeros((1, 0), bool), np.zeros((1, 0), bool), locations, cfg)
