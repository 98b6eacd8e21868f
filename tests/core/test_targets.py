"""assign_targets against a brute-force loop over images, locations and boxes."""

import functools

import jax
import numpy as np
import pytest

from fcos_jax.model import config as config_lib
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.targets import Targets, assign_targets

F32 = np.float32


def reference_assign(boxes, classes, box_valid, is_crowd, locations, cfg):
  """Spec section 2, one (image, location, box) at a time, in float32."""
  num_images, num_boxes = classes.shape
  num_points = locations.num_locations
  radius = F32(cfg.assign.center_sampling_radius)
  out = dict(labels=np.zeros((num_images, num_points), np.int32),
             positive=np.zeros((num_images, num_points), bool),
             reg_targets=np.zeros((num_images, num_points, 4), F32),
             centerness=np.zeros((num_images, num_points), F32),
             matched_index=np.full((num_images, num_points), -1, np.int32))
  for i in range(num_images):
    for p in range(num_points):
      x, y = (F32(v) for v in locations.points[p])
      s = F32(locations.strides[p])
      lo, hi = (F32(v) for v in locations.size_ranges[p])
      best, best_area = -1, None
      for k in range(num_boxes):
        if not box_valid[i, k] or is_crowd[i, k]:
          continue
        x0, y0, x1, y1 = (F32(v) for v in boxes[i, k])
        l, t, r, b = x - x0, y - y0, x1 - x, y1 - y
        if radius > 0:
          cx, cy = (x0 + x1) / F32(2), (y0 + y1) / F32(2)
          # The box clipped to the centre square of half-side radius*stride.
          c0, c1 = max(cx - radius * s, x0), min(cx + radius * s, x1)
          d0, d1 = max(cy - radius * s, y0), min(cy + radius * s, y1)
          inside = min(x - c0, y - d0, c1 - x, d1 - y) > 0
        else:
          inside = min(l, t, r, b) > 0
        m = max(l, t, r, b)
        if cfg.assign.size_range_inclusive:
          in_range = lo <= m <= hi
        else:
          in_range = lo < m < hi
        if not (inside and in_range):
          continue
        area = (x1 - x0) * (y1 - y0)
        if best < 0 or area < best_area:  # strict: equal areas keep the first
          best, best_area = k, area
      if best >= 0:
        x0, y0, x1, y1 = (F32(v) for v in boxes[i, best])
        l, t, r, b = x - x0, y - y0, x1 - x, y1 - y
        out["labels"][i, p] = classes[i, best]
        out["positive"][i, p] = True
        out["reg_targets"][i, p] = (l, t, r, b)
        out["centerness"][i, p] = np.sqrt(
            min(l, r) / max(l, r) * (min(t, b) / max(t, b)))
        out["matched_index"][i, p] = best
  return out


@functools.lru_cache(maxsize=None)
def _jitted(canvas_hw, cfg):
  locations = compute_locations(canvas_hw, cfg)
  return locations, jax.jit(
      lambda b, c, v, cr: assign_targets(b, c, v, cr, locations, cfg))


def run_both(boxes, classes, box_valid, is_crowd, canvas_hw, cfg):
  locations, fn = _jitted(tuple(canvas_hw), cfg)
  got = jax.device_get(fn(boxes, classes, box_valid, is_crowd))
  want = reference_assign(boxes, classes, box_valid, is_crowd, locations, cfg)
  return locations, got, want


def assert_same(got: Targets, want):
  np.testing.assert_array_equal(got.positive, want["positive"])
  np.testing.assert_array_equal(got.matched_index, want["matched_index"])
  np.testing.assert_array_equal(got.labels, want["labels"])
  np.testing.assert_array_equal(got.reg_targets, want["reg_targets"])
  np.testing.assert_allclose(got.centerness, want["centerness"], rtol=1e-6,
                             atol=1e-7)


def random_case(rng, num_images, num_boxes, canvas_hw, num_classes=5):
  """Boxes of every size (sub-stride to full canvas), some on integer
  coordinates (so max(ltrb) lands exactly on range edges), padding, crowd."""
  h, w = canvas_hw
  size = np.exp(rng.uniform(np.log(2), np.log(max(h, w)),
                            (num_images, num_boxes, 2)))
  aspect = np.exp(rng.uniform(-1, 1, (num_images, num_boxes, 1)))
  size = size * np.concatenate([aspect, 1 / aspect], -1)
  cx = rng.uniform(-0.1 * w, 1.1 * w, (num_images, num_boxes))
  cy = rng.uniform(-0.1 * h, 1.1 * h, (num_images, num_boxes))
  boxes = np.stack([cx - size[..., 0] / 2, cy - size[..., 1] / 2,
                    cx + size[..., 0] / 2, cy + size[..., 1] / 2], -1)
  boxes = np.clip(boxes, 0, [w, h, w, h])
  snap = rng.random((num_images, num_boxes, 1)) < 0.5
  boxes = np.where(snap, np.round(boxes), boxes).astype(F32)
  # A few exact duplicates with another class: equal areas.
  dup = rng.random((num_images, num_boxes)) < 0.15
  boxes[:, 1:][dup[:, 1:]] = boxes[:, :-1][dup[:, 1:]]
  classes = rng.integers(0, num_classes, (num_images, num_boxes)).astype(
      np.int32)
  box_valid = rng.random((num_images, num_boxes)) < 0.8
  is_crowd = rng.random((num_images, num_boxes)) < 0.1
  return boxes, classes, box_valid, is_crowd


PRESETS = {
    "official": config_lib.official(),
    "paper": config_lib.paper(),
    "torchvision": config_lib.torchvision(),
    # Small ranges, so that small canvases exercise every level.
    "small_ranges": config_lib.official(center_sampling_radius=0.0, size_ranges=(
        (-1.0, 8.0), (8.0, 16.0), (16.0, 32.0), (32.0, 64.0),
        (64.0, float("inf")))),
    "small_ranges_open": config_lib.torchvision(
        size_ranges=((0.0, 8.0), (8.0, 16.0), (16.0, 32.0), (32.0, 64.0),
                     (64.0, float("inf"))), center_sampling_radius=2.5),
}


# One canvas per preset (each compiles once), of varied shapes and ratios.
CANVASES = {"official": (64, 96), "paper": (100, 72), "torchvision": (96, 64),
            "small_ranges": (72, 120), "small_ranges_open": (136, 136)}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_matches_brute_force_on_random_cases(preset):
  cfg = PRESETS[preset]
  rng = np.random.default_rng(sorted(PRESETS).index(preset))
  canvas_hw = CANVASES[preset]
  boxes, classes, valid, crowd = random_case(rng, 8, 12, canvas_hw)
  _, got, want = run_both(boxes, classes, valid, crowd, canvas_hw, cfg)
  assert_same(got, want)
  # Tiny size ranges leave few positives (most boxes land on the sparse top
  # levels); the real presets give about a hundred.
  assert got.positive.sum() >= 5, "the random case should have positives"


@pytest.mark.parametrize("num_boxes", [33, 70])
def test_more_than_32_boxes(num_boxes):
  # The assigner packs boxes 32 to a word: matches must cross words.
  cfg = PRESETS["small_ranges"]
  rng = np.random.default_rng(num_boxes)
  boxes, classes, valid, crowd = random_case(rng, 1, num_boxes, (72, 64))
  valid[:] = True
  crowd[:] = False
  _, got, want = run_both(boxes, classes, valid, crowd, (72, 64), cfg)
  assert_same(got, want)
  area = (boxes[0, :, 2] - boxes[0, :, 0]) * (boxes[0, :, 3] - boxes[0, :, 1])
  rank = np.argsort(np.argsort(area, kind="stable"), kind="stable")
  matched = got.matched_index[0][got.positive[0]]
  assert rank[matched].max() >= 32, "some match should be in the 2nd word"


def _index(locations, level, x, y):
  """Index in P of the location at (x, y) on `level`."""
  sl = locations.level_slice(level)
  pts = locations.points[sl]
  hit = np.nonzero((pts[:, 0] == x) & (pts[:, 1] == y))[0]
  assert hit.size == 1, (level, x, y)
  return sl.start + int(hit[0])


def _single(box, canvas_hw, cfg, num_boxes=1):
  boxes = np.zeros((1, num_boxes, 4), F32)
  boxes[0, 0] = box
  valid = np.zeros((1, num_boxes), bool)
  valid[0, 0] = True
  classes = np.full((1, num_boxes), 3, np.int32)
  return run_both(boxes, classes, valid, np.zeros_like(valid), canvas_hw, cfg)


@pytest.mark.parametrize("inclusive", [True, False])
def test_size_range_boundary(inclusive):
  # Location (100, 100) on level 0 (stride 8, half offset); the box gives
  # l = 64 exactly = the level-0 upper and level-1 lower bound.
  cfg = config_lib.official(center_sampling_radius=0.0,
                            size_range_inclusive=inclusive)
  box = (36.0, 90.0, 110.0, 110.0)  # l = 64, t = 10, r = 10, b = 10 at (100,100)
  locations, got, want = _single(box, (256, 256), cfg)
  assert_same(got, want)
  p0 = _index(locations, 0, 100.0, 100.0)
  assert got.positive[0, p0] == inclusive
  # Level-1 location (104, 104): l = 68, in (64, 128] either way.
  p1 = _index(locations, 1, 104.0, 104.0)
  assert got.positive[0, p1]
  np.testing.assert_array_equal(got.reg_targets[0, p1], [68, 14, 6, 6])
  # Level-1 location (88, 104): m = 52 < 64, too small for level 1.
  assert not got.positive[0, _index(locations, 1, 88.0, 104.0)]


def test_max_exactly_on_level1_lower_bound():
  # Level 1 (stride 16, offset 8) location (72, 104): l = 64 exactly.
  for inclusive in (True, False):
    cfg = config_lib.official(center_sampling_radius=0.0,
                              size_range_inclusive=inclusive)
    locations, got, want = _single((8.0, 100.0, 80.0, 110.0), (256, 256), cfg)
    assert_same(got, want)
    p = _index(locations, 1, 72.0, 104.0)
    assert got.positive[0, p] == inclusive


def test_equal_areas_lowest_index_wins():
  cfg = config_lib.official()
  boxes = np.array([[[10, 10, 50, 30], [10, 10, 50, 30], [12, 8, 52, 28],
                     [0, 0, 60, 60]]], F32)  # three of area 800, one larger
  classes = np.array([[1, 2, 3, 4]], np.int32)
  valid = np.ones((1, 4), bool)
  crowd = np.zeros((1, 4), bool)
  locations, got, want = run_both(boxes, classes, valid, crowd, (64, 64), cfg)
  assert_same(got, want)
  p = _index(locations, 0, 28.0, 20.0)
  assert got.matched_index[0, p] == 0 and got.labels[0, p] == 1
  # Without box 0, box 1 (not 2) takes over; without 0 and 1, box 2.
  valid[0, 0] = False
  _, got, _ = run_both(boxes, classes, valid, crowd, (64, 64), cfg)
  assert got.matched_index[0, p] == 1
  crowd[0, 1] = True
  _, got, _ = run_both(boxes, classes, valid, crowd, (64, 64), cfg)
  assert got.matched_index[0, p] == 2


def test_box_smaller_than_a_stride():
  cfg = config_lib.official()
  # Between level-0 points (4, 12, 20, ...): no location inside.
  _, got, want = _single((5.0, 5.0, 11.0, 11.0), (64, 64), cfg)
  assert_same(got, want)
  assert not got.positive.any()
  # Around point (20, 20): exactly one positive, on level 0.
  locations, got, want = _single((18.0, 17.0, 21.0, 24.0), (64, 64), cfg)
  assert_same(got, want)
  assert got.positive.sum() == 1
  p = _index(locations, 0, 20.0, 20.0)
  assert got.positive[0, p]
  np.testing.assert_array_equal(got.reg_targets[0, p], [2, 3, 1, 4])
  np.testing.assert_allclose(got.centerness[0, p],
                             np.sqrt(1 / 2 * 3 / 4), rtol=1e-6)


@pytest.mark.parametrize("preset", ["official", "torchvision"])
def test_boxes_touching_the_border(preset):
  cfg = PRESETS[preset]
  boxes = np.array([[[0, 0, 200, 136], [0, 0, 30, 40], [170, 96, 200, 136],
                     [0, 60, 200, 80]]], F32)
  classes = np.array([[0, 1, 2, 3]], np.int32)
  valid = np.ones((1, 4), bool)
  _, got, want = run_both(boxes, classes, valid, np.zeros_like(valid),
                          (136, 200), cfg)
  assert_same(got, want)
  assert got.positive.sum() > 0


@pytest.mark.parametrize("what", ["no_valid_box", "all_crowd"])
def test_no_usable_box_is_all_background(what):
  cfg = config_lib.official()
  rng = np.random.default_rng(7)
  boxes, classes, valid, crowd = random_case(rng, 3, 6, (64, 64))
  if what == "no_valid_box":
    valid[:] = False
  else:
    valid[:] = True
    crowd[:] = True
  _, got, want = run_both(boxes, classes, valid, crowd, (64, 64), cfg)
  assert_same(got, want)
  assert not got.positive.any()
  assert (got.matched_index == -1).all() and (got.labels == 0).all()
  assert (got.reg_targets == 0).all() and (got.centerness == 0).all()
  assert np.isfinite(got.centerness).all()


def test_shapes_and_dtypes():
  cfg = config_lib.official()
  rng = np.random.default_rng(3)
  boxes, classes, valid, crowd = random_case(rng, 2, 5, (64, 96))
  locations, got, _ = run_both(boxes, classes, valid, crowd, (64, 96), cfg)
  p = locations.num_locations
  assert got.labels.shape == (2, p) and got.labels.dtype == np.int32
  assert got.positive.shape == (2, p) and got.positive.dtype == bool
  assert got.reg_targets.shape == (2, p, 4)
  assert got.reg_targets.dtype == np.float32
  assert got.centerness.shape == (2, p) and got.centerness.dtype == np.float32
  assert got.matched_index.dtype == np.int32


def test_bad_input_is_named():
  cfg = config_lib.official()
  locations = compute_locations((64, 64), cfg)
  boxes = np.zeros((2, 3, 4), F32)
  ok = np.ones((2, 3), bool)
  with pytest.raises(ValueError, match="boxes must be"):
    assign_targets(boxes[..., :3], ok.astype(np.int32), ok, ok, locations, cfg)
  with pytest.raises(ValueError, match="classes must be"):
    assign_targets(boxes, np.zeros((2, 4), np.int32), ok, ok, locations, cfg)
  with pytest.raises(ValueError, match="M = 0"):
    assign_targets(boxes[:, :0], ok[:, :0], ok[:, :0], ok[:, :0], locations,
                   cfg)
  with pytest.raises(TypeError, match="Locations"):
    assign_targets(boxes, ok.astype(np.int32), ok, ok, locations.points, cfg)
