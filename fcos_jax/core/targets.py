"""FCOS target assignment: which ground-truth box each location regresses.

The rule is in docs/algorithm.md, "Assignment" (the paper's Eq. 1 and 3).
Naming: B = images, P = locations over all levels (`Locations`), M = padded
ground-truth boxes. Per image (vmapped over B) and per level, the match test
splits into per-axis tests ([M, W] along x, [M, H] along y); boxes are
ranked by area and those tests packed as bits, 32 boxes to a uint32 word, so
the only per-(location, box) work is three bitwise ops on [K, H, W] words
(K = ceil(M / 32)) and a find-first-set. No [B, P, M] tensor, let alone
[B, P, M, 4], is ever built.

Rules (official FCOS `compute_targets_for_locations`; torchvision and
detectron2 `_match_anchors` state the same rule differently):
- l* = x - x0, t* = y - y0, r* = x1 - x, b* = y1 - y, in canvas pixels.
- Inside: min(l*, t*, r*, b*) > 0. With centre sampling of radius R strides,
  the location must instead lie strictly inside the box clipped to the square
  [cx - R s, cy - R s, cx + R s, cy + R s] around the box centre
  ((x0 + x1) / 2, (y0 + y1) / 2); that region lies inside the box, so it
  implies the inside test.
- Scale: m = max(l*, t*, r*, b*) within the location's size range,
  lo <= m <= hi (official) or lo < m < hi (torchvision).
- Padded (`box_valid` False) and crowd boxes never match (official drops
  crowd boxes in training).
- Several boxes pass: the smallest area (x1 - x0) * (y1 - y0) wins; equal
  areas: the lowest box index (what torch's min/max return in the references).
- None passes: background.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax import errors
from fcos_jax.core import box_coding
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import Locations


class Targets(NamedTuple):
  """Training targets of every location (a pytree).

  labels:        [B, P] int32, class of the matched box in [0, C); 0 on
                 background too, so read it together with `positive`.
  positive:      [B, P] bool, the location matched a box.
  reg_targets:   [B, P, 4] float32 (l*, t*, r*, b*) in pixels; 0 on background.
  centerness:    [B, P] float32 in (0, 1]; 0 on background.
  matched_index: [B, P] int32, index in M of the matched box; -1 on background.
  alignment:     [B, P] float32, TOOD's normalised alignment metric (the
                 soft class target and box weight; 1 on the warm-up's ATSS
                 positives), 0 on background; None for the other assigners.
  initial:       [B] bool, TOOD's warm-up (ATSS targets, focal loss) is on;
                 None for the other assigners.
  """

  labels: jax.Array
  positive: jax.Array
  reg_targets: jax.Array
  centerness: jax.Array
  matched_index: jax.Array
  alignment: jax.Array | None = None
  initial: jax.Array | None = None


def axis_tests(coord, lo_edge, hi_edge, stride: float, radius: float,
               size_lo: float, size_hi: float, inclusive: bool):
  """The per-axis halves of the match test along x (or y) on one level.

  coord: [N] location coordinates along the axis (pixels); lo_edge, hi_edge:
  [M, 1] box edges (x0, x1 or y0, y1). Returns three [M, N] bools:
    inside:  strictly inside the box (clipped to the centre band with centre
             sampling) along this axis, and max of the two distances <= hi;
    reach:   max of the two distances >= lo (> lo when exclusive);
  so that for a location (x, y) the full test is
    inside_x & inside_y & (reach_x | reach_y),
  because lo <= max(mx, my) <= hi  <=>  both <= hi and either >= lo.
  """
  c = coord[None, :]
  if radius > 0:
    # Official form: strictly inside the box clipped to the centre square.
    rs = stride * radius
    centre = (lo_edge + hi_edge) / 2
    inside = ((c - jnp.maximum(centre - rs, lo_edge) > 0)
              & (jnp.minimum(centre + rs, hi_edge) - c > 0))
  else:
    inside = (c - lo_edge > 0) & (hi_edge - c > 0)
  m = jnp.maximum(c - lo_edge, hi_edge - c)  # this axis's half of max(ltrb)
  if inclusive:
    return inside & (m <= size_hi), m >= size_lo
  return inside & (m < size_hi), m > size_lo


def level_grid(locations: Locations, level: int):
  """(xs [W], ys [H], stride, (lo, hi)) of a level; the points form a grid."""
  h, w = locations.level_sizes[level]
  sl = locations.level_slice(level)
  pts = np.asarray(locations.points[sl]).reshape(h, w, 2)
  xs, ys = pts[0, :, 0], pts[:, 0, 1]
  if not (np.array_equal(pts[..., 0], np.broadcast_to(xs, (h, w)))
          and np.array_equal(pts[..., 1], np.broadcast_to(ys[:, None], (h, w)))):
    raise ValueError(
        f"assign_targets: the points of level {level} are not a row-major "
        f"grid; build locations with compute_locations(canvas_hw, cfg).")
  stride = float(locations.strides[sl][0])
  lo, hi = (float(v) for v in locations.size_ranges[sl][0])
  return xs, ys, stride, (lo, hi)


def _pack_bits(flags):
  """[M, N] bool -> [K, N] uint32, K = ceil(M / 32): bit m % 32 of word
  m // 32 is flags[m]."""
  num, n = flags.shape
  words = -(-num // 32)
  flags = jnp.pad(flags, ((0, 32 * words - num), (0, 0)))
  bit = jnp.left_shift(jnp.uint32(1), jnp.arange(32, dtype=jnp.uint32))
  # Distinct powers of two: their sum is their bitwise or.
  return jnp.sum(flags.reshape(words, 32, n).astype(jnp.uint32)
                 * bit[None, :, None], axis=1, dtype=jnp.uint32)


def _first_set_bit(words, num_boxes: int):
  """[K, ...] uint32 -> [...] int32: the lowest set bit position over the
  K words (word k holds positions 32k .. 32k + 31); num_boxes if none."""
  # Isolate the lowest set bit; ones below it count its position.
  low = words & (~words + jnp.uint32(1))
  pos = jax.lax.population_count(low - jnp.uint32(1)).astype(jnp.int32)
  pos = pos + 32 * jnp.arange(words.shape[0], dtype=jnp.int32).reshape(
      (-1,) + (1,) * (words.ndim - 1))
  return jnp.min(jnp.where(words != 0, pos, num_boxes), axis=0)


def _assign_one(boxes, classes, usable, grids, radius: float, inclusive: bool):
  """One image: boxes [M, 4], classes [M], usable [M] -> `Targets` of [P]."""
  num_boxes = boxes.shape[0]
  x0, y0, x1, y1 = (boxes[:, k] for k in range(4))     # [M]
  # Rank boxes by (area, index): the first passing box in this order is the
  # smallest, ties going to the lowest index (stable sort).
  area = jnp.where(usable, (x1 - x0) * (y1 - y0), jnp.inf)
  order = jnp.argsort(area, stable=True).astype(jnp.int32)  # [M]
  sb = boxes[order]
  su = usable[order]

  first, points = [], []
  for xs, ys, stride, (lo, hi) in grids:  # 5 levels: static loop.
    in_x, reach_x = axis_tests(jnp.asarray(xs), sb[:, 0:1], sb[:, 2:3],
                                stride, radius, lo, hi, inclusive)  # [M, W]
    in_y, reach_y = axis_tests(jnp.asarray(ys), sb[:, 1:2], sb[:, 3:4],
                                stride, radius, lo, hi, inclusive)  # [M, H]
    in_x = in_x & su[:, None]
    # Pack the boxes (in rank order) as bits, 32 to a word: the pair test
    # then runs on [K, H, W] words, K = ceil(M / 32), instead of [M, H, W].
    ay, ax, ry, rx = (_pack_bits(a) for a in (in_y, in_x, reach_y, reach_x))
    words = (ay[:, :, None] & ax[:, None, :]
             & (ry[:, :, None] | rx[:, None, :]))              # [K, H, W]
    first.append(_first_set_bit(words, num_boxes).reshape(-1))
    gx, gy = np.meshgrid(xs, ys)
    points.append(np.stack([gx.ravel(), gy.ravel()], -1))
  first = jnp.concatenate(first)                       # [P] rank or M
  points = np.concatenate(points).astype(np.float32)   # [P, 2]

  positive = first < num_boxes
  index = order[jnp.minimum(first, num_boxes - 1)]     # [P]
  return targets_of_match(points, boxes, classes, index, positive)


def targets_of_match(points, boxes, classes, index, positive) -> Targets:
  """The `Targets` of one image once each location's box is chosen (any
  assigner): points [P, 2], boxes [M, 4], classes [M], index [P] (a valid
  box index everywhere), positive [P]."""
  ltrb = box_coding.encode_boxes(points, boxes[index])  # [P, 4]
  ltrb = jnp.where(positive[:, None], ltrb, 0.0)
  # Safe operands on background so that no 0/0 appears (not differentiated,
  # but NaNs in dead lanes are still worth avoiding).
  safe = jnp.where(positive[:, None], ltrb, 1.0)
  l, t, r, b = (safe[:, k] for k in range(4))
  ctr = jnp.sqrt((jnp.minimum(l, r) / jnp.maximum(l, r))
                 * (jnp.minimum(t, b) / jnp.maximum(t, b)))
  return Targets(
      labels=jnp.where(positive, classes[index], 0).astype(jnp.int32),
      positive=positive,
      reg_targets=ltrb,
      centerness=jnp.where(positive, ctr, 0.0),
      matched_index=jnp.where(positive, index, -1))


def _check_inputs(boxes, classes, box_valid, is_crowd, locations, cfg):
  if not isinstance(locations, Locations):
    raise TypeError(
        f"assign_targets: locations must be a fcos_jax.core.locations."
        f"Locations (from compute_locations(canvas_hw, cfg)), got "
        f"{type(locations).__name__}.")
  if boxes.ndim != 3 or boxes.shape[-1] != 4:
    raise ValueError(
        f"assign_targets: boxes must be [B, M, 4] (x0, y0, x1, y1), got shape "
        f"{tuple(boxes.shape)}; pad every image to M boxes and batch them.")
  bm = tuple(boxes.shape[:2])
  if bm[1] == 0:
    raise ValueError(
        "assign_targets: boxes has M = 0; pad every image to at least one box "
        "(with box_valid False) so that shapes stay static.")
  for name, value in (("classes", classes), ("box_valid", box_valid),
                      ("is_crowd", is_crowd)):
    if tuple(value.shape) != bm:
      raise ValueError(
          f"assign_targets: {name} must be [B, M] = {bm} like boxes, got "
          f"shape {tuple(value.shape)}.")
  if cfg.assign.center_sampling_radius < 0:
    raise errors.ConfigError(
        f"ModelConfig.center_sampling_radius={cfg.assign.center_sampling_radius}: "
        f"must be >= 0 (0 disables centre sampling).")
  if len(locations.level_sizes) != cfg.num_levels:
    raise ValueError(
        f"assign_targets: locations have {len(locations.level_sizes)} levels "
        f"but cfg has {cfg.num_levels}; build them with the same cfg.")


def assign_targets(boxes, classes, box_valid, is_crowd, locations: Locations,
                   cfg: ModelConfig) -> Targets:
  """Assigns a ground-truth box (or background) to every location.

  Pure and jit-able; `locations` and `cfg` are trace-time constants.

  Args:
    boxes:     [B, M, 4] float (x0, y0, x1, y1) in canvas pixels.
    classes:   [B, M] int32 in [0, C).
    box_valid: [B, M] bool, False for padding.
    is_crowd:  [B, M] bool, crowd boxes are never positive.
    locations: `compute_locations(canvas_hw, cfg)`, P locations.
    cfg:       reads center_sampling_radius (strides), size_range_inclusive
               and class_agnostic (every label 0).

  Returns:
    `Targets`, each field [B, P, ...]; regression targets in pixels (divide by
    `locations.strides` for stride units).
  """
  _check_inputs(boxes, classes, box_valid, is_crowd, locations, cfg)
  boxes = jnp.asarray(boxes, jnp.float32)
  usable = jnp.asarray(box_valid, bool) & ~jnp.asarray(is_crowd, bool)
  classes = jnp.asarray(classes, jnp.int32)
  if cfg.class_agnostic:  # One 'object' class (FCOS as an RPN).
    classes = jnp.zeros_like(classes)
  grids = [level_grid(locations, level) for level in range(cfg.num_levels)]

  def one(b, c, u):
    return _assign_one(b, c, u, grids, float(cfg.assign.center_sampling_radius),
                       bool(cfg.assign.size_range_inclusive))

  return jax.vmap(one)(boxes, classes, usable)
