"""The test-time augmentation merge (fcos_jax/core/tta.py): flips by hand,
the merge against a NumPy brute force of the official select_over_all_levels
(class-wise greedy NMS over all passes' candidates, best K)."""

import jax
import numpy as np
import pytest

from fcos_jax.core import tta
from fcos_jax.model import config as config_lib


def test_flip_boxes_by_hand():
  boxes = np.array([[[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.0],
                     [99.5, 1.0, 100.0, 2.0]]], np.float32)
  got = tta.flip_boxes(boxes, np.array([100.0]))
  np.testing.assert_array_equal(got, [[[70.0, 20.0, 90.0, 40.0],
                                       [0.0, 0.0, 100.0, 5.0],
                                       [0.0, 1.0, 0.5, 2.0]]])
  # Twice is the identity, per image width.
  two = np.concatenate([boxes, boxes])
  w = np.array([100.0, 120.0], np.float32)
  np.testing.assert_array_equal(tta.flip_boxes(tta.flip_boxes(two, w), w),
                                two)


def _iou(a, b):
  w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
  h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
  inter = w * h
  union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
           - inter)
  return inter / union


def _brute_force(boxes, scores, classes, valid, base_hw, orig_hw, nms_iou,
                 k):
  """One image: greedy class-wise NMS over every candidate (stable by
  index on ties), best k, boxes scaled to original pixels and clipped."""
  order = sorted(np.nonzero(valid)[0], key=lambda i: (-scores[i], i))
  kept = []
  for i in order:
    if all(classes[j] != classes[i] or _iou(boxes[i], boxes[j]) <= nms_iou
           for j in kept):
      kept.append(i)
    if len(kept) == k:
      break
  r = np.asarray(orig_hw, np.float64) / np.asarray(base_hw, np.float64)
  scale = np.array([r[1], r[0], r[1], r[0]])
  h, w = orig_hw  # Clipped to the original image, as plain inference.
  return (np.clip(boxes[kept] * scale, 0, [w, h, w, h]), scores[kept],
          classes[kept])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merge_against_numpy_brute_force(seed):
  rng = np.random.default_rng(seed)
  cfg = config_lib.official(num_classes=3, max_detections=20, nms_iou=0.5)
  b, passes, n = 2, 3, 40  # Three passes' candidates, concatenated.
  xy = rng.uniform(0, 80, (b, passes * n, 2))
  wh = rng.uniform(4, 30, (b, passes * n, 2))
  boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
  # Quantised scores: ties across passes happen.
  scores = (rng.integers(1, 50, (b, passes * n)) / 50).astype(np.float32)
  classes = rng.integers(0, 3, (b, passes * n)).astype(np.int32)
  valid = rng.uniform(size=(b, passes * n)) < 0.8
  base_hw = np.array([[96, 128], [100, 100]], np.int32)
  orig_hw = np.array([[480, 640], [100, 100]], np.int32)
  got = jax.jit(lambda *a: tta.merge(*a, cfg=cfg))(
      boxes, scores, classes, valid, base_hw, orig_hw)
  for i in range(b):
    wb, ws, wc = _brute_force(boxes[i].astype(np.float64), scores[i],
                              classes[i], valid[i], base_hw[i], orig_hw[i],
                              0.5, 20)
    m = len(ws)
    assert int(got["valid"][i].sum()) == m
    np.testing.assert_array_equal(got["scores"][i][:m], ws)
    np.testing.assert_array_equal(got["classes"][i][:m], wc)
    np.testing.assert_allclose(got["boxes"][i][:m], wb, rtol=1e-5, atol=1e-4)
    assert not got["valid"][i][m:].any()
    assert (np.asarray(got["scores"][i][m:]) == 0).all()
