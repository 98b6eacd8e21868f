"""Best possible recall and ambiguity of FCOS's assignment: hand-built cases
with counts worked out by hand, and a plain loop over locations and boxes
on random cases."""

import math

import jax
import numpy as np
import pytest

import assignment_reference
from fcos_jax.analysis import assignment
from fcos_jax.model.config import official
from fcos_jax.core.locations import compute_locations

CANVAS = (128, 128)
CFG = official(num_classes=3, center_sampling_radius=0.0)


def _batch(boxes, classes, crowd=None, m=6):
  """One image, padded to m boxes."""
  n = len(boxes)
  out = {"boxes": np.zeros((1, m, 4), np.float32),
         "classes": np.zeros((1, m), np.int32),
         "box_valid": np.zeros((1, m), bool),
         "is_crowd": np.zeros((1, m), bool)}
  out["boxes"][0, :n] = boxes
  out["classes"][0, :n] = classes
  out["box_valid"][0, :n] = True
  if crowd is not None:
    out["is_crowd"][0, :n] = crowd
  return out


def _counts(batch, cfg=CFG):
  loc = compute_locations(CANVAS, cfg)
  fn = jax.jit(lambda b: assignment.assignment_counts(b, loc, cfg))
  return {k: int(v) for k, v in fn(batch).items()}


def test_nested_boxes_of_two_classes():
  # P3 locations sit at 4, 12, 20, ... Box A (40 px, class 0) holds the
  # 5 x 5 P3 locations at 4..36 (max(l,t,r,b) <= 36 < 64: all on P3); box
  # B (16 px, class 1) inside it holds the 2 x 2 at 12, 20. No P4 location
  # qualifies (max <= 32 < 64). So 25 positives, 4 of them in both boxes,
  # of two classes; the smallest area gives those 4 to B: both recalled.
  batch = _batch([[0, 0, 40, 40], [8, 8, 24, 24]], [0, 1])
  assert _counts(batch) == dict(boxes=2, recalled=2, positive=25,
                                ambiguous=4, ambiguous_classes=4)
  same_class = _batch([[0, 0, 40, 40], [8, 8, 24, 24]], [2, 2])
  assert _counts(same_class)["ambiguous_classes"] == 0
  assert _counts(same_class)["ambiguous"] == 4


def test_box_smaller_than_every_stride_is_missed():
  # A 2 x 2 box between the P3 locations 4 and 12 contains none of any level.
  batch = _batch([[5, 5, 7, 7], [0, 0, 40, 40]], [0, 1])
  c = _counts(batch)
  assert (c["boxes"], c["recalled"], c["positive"]) == (2, 1, 25)
  with_sampling = CFG.replace(center_sampling_radius=1.5)
  assert _counts(batch, with_sampling)["recalled"] == 1


def test_box_beyond_every_size_range_is_missed():
  # The whole canvas: max(l, t, r, b) >= 64 everywhere, above every range.
  capped = CFG.replace(size_ranges=((-1, 16), (16, 32), (32, 48), (48, 56),
                                    (56, 60)))
  batch = _batch([[0, 0, 128, 128]], [0])
  assert _counts(batch, capped) == dict(boxes=1, recalled=0, positive=0,
                                        ambiguous=0, ambiguous_classes=0)
  # P4 alone with no size limit takes it: every P4 location (8 x 8) inside.
  p4 = capped.replace(**assignment.P4_ALONE)
  assert _counts(batch, p4) == dict(boxes=1, recalled=1, positive=64,
                                    ambiguous=0, ambiguous_classes=0)


def test_crowd_box_is_neither_counted_nor_matched():
  batch = _batch([[0, 0, 40, 40], [8, 8, 24, 24]], [0, 1], crowd=[True, False])
  assert _counts(batch) == dict(boxes=1, recalled=1, positive=4, ambiguous=0,
                                ambiguous_classes=0)


def test_settings_cover_fpn_p4_and_centre_sampling():
  settings = assignment.fcos_settings(CFG)
  assert len(settings) == 4
  radii = sorted(c.assign.center_sampling_radius for c in settings.values())
  assert radii == [0.0, 0.0, 1.5, 1.5]
  p4 = [c for c in settings.values() if c.strides == (16,)]
  assert len(p4) == 2 and all(c.assign.size_ranges == ((-1.0, math.inf),) for c in p4)


def _random_image(rng, m=10):
  n = int(rng.integers(1, m + 1))
  x0 = rng.uniform(-10, 120, m)
  y0 = rng.uniform(-10, 120, m)
  w = rng.uniform(1, 110, m)
  h = rng.uniform(1, 110, m)
  boxes = np.stack([x0, y0, x0 + w, y0 + h], -1).astype(np.float32)
  valid = np.arange(m) < n
  crowd = valid & (rng.uniform(size=m) < 0.15)
  classes = rng.integers(0, 3, m).astype(np.int32)
  return boxes, classes, valid, crowd


@pytest.mark.parametrize("cfg", [
    CFG,
    CFG.replace(center_sampling_radius=1.5),
    CFG.replace(size_ranges=((-1.0, 32.0), (32.0, 64.0), (64.0, 128.0),
                             (128.0, 256.0), (256.0, math.inf))),
    CFG.replace(**assignment.P4_ALONE),
    CFG.replace(size_range_inclusive=False, location_offset="zero",
                size_ranges=((0.0, 16.0), (16.0, 32.0), (32.0, 64.0),
                             (64.0, 128.0), (128.0, math.inf))),
], ids=["fpn", "centre_sampling", "small_ranges", "p4_alone", "torchvision"])
def test_agrees_with_a_plain_loop(cfg):
  rng = np.random.default_rng(0)
  loc = compute_locations(CANVAS, cfg)
  images = [_random_image(rng) for _ in range(6)]
  boxes, classes, valid, crowd = (np.stack(x) for x in zip(*images))
  recalled = jax.jit(lambda *a: assignment.recalled_boxes(*a, loc, cfg))(
      boxes, classes, valid, crowd)
  count, differ = jax.jit(
      lambda *a: assignment.location_matches(*a, loc, cfg))(
          boxes, classes, valid, crowd)
  for i, (b, c, v, cr) in enumerate(images):
    want = assignment_reference.numpy_reference(
        b, c, v & ~cr, loc.points, loc.strides, loc.size_ranges,
        cfg.assign.center_sampling_radius, cfg.assign.size_range_inclusive)
    np.testing.assert_array_equal(np.asarray(recalled[i]), want[0])
    np.testing.assert_array_equal(np.asarray(count[i]), want[1])
    np.testing.assert_array_equal(np.asarray(differ[i]), want[2])
  assert np.asarray(count).max() >= 2  # The cases do hold ambiguity.


def test_split_boxes_are_the_evaluation_pipelines(tmp_path):
  """No image decoded, yet the same boxes, canvases and crowd flags as the
  evaluation pipeline (which decodes and resizes every image)."""
  from fcos_jax.analysis import split_boxes
  from fcos_jax.data.config import default_data_config
  from fcos_jax.data.coco_format import load_coco_split
  from fcos_jax.data.pipeline import build_eval_dataset
  from coco_files import random_images, write_coco
  images = random_images(10, seed=2, sizes=((48, 64), (64, 48), (50, 61)),
                         categories=(1, 2), empty_every=4)
  images[1][2].append((2, 2, 6, 6, 2, 1))  # A crowd box.
  images[2][2].append((60, 10, 30, 10, 1, 0))  # Partly outside: clipped.
  js, im = write_coco(str(tmp_path), images)
  c = default_data_config()
  c.source = "coco_format"
  c.coco.train_json = c.coco.val_json = js
  c.coco.train_images = c.coco.val_images = im
  c.min_size, c.max_size, c.canvases = (40, 48), 80, ((64, 96), (96, 64))
  c.max_boxes, c.num_parallel_calls = 16, 2
  want = {}
  for b in build_eval_dataset(c, 4, 0, 1):
    for i in np.flatnonzero(b["example_valid"]):
      v = b["box_valid"][i]
      want[int(b["image_id"][i])] = (b["image"].shape[1:3], b["boxes"][i][v],
                                     b["classes"][i][v], b["is_crowd"][i][v])
  table, _ = load_coco_split(js, im)
  got = {}
  for canvas, b in split_boxes.box_batches(table, c, 3):
    for i in np.flatnonzero(b["example_valid"]):
      v = b["box_valid"][i]
      got[int(b["image_id"][i])] = (canvas, b["boxes"][i][v],
                                    b["classes"][i][v], b["is_crowd"][i][v])
  assert sorted(got) == sorted(want) == list(range(1, 11))
  for k in want:
    assert tuple(got[k][0]) == tuple(want[k][0])
    for g, w in zip(got[k][1:], want[k][1:]):
      np.testing.assert_array_equal(g, w)
  assert sum(int(w[3].sum()) for w in want.values()) == 1
