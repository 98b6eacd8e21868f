"""Where FCOS predicts: the locations of every FPN level on a fixed canvas.

All shapes are static functions of the canvas size, so they are computed in
NumPy at trace time. Naming: P = locations over all levels, concatenated
level by level (P3 first), each level flattened row-major over (H_l, W_l).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fcos_jax import errors
from fcos_jax.model.config import ModelConfig


def level_sizes(canvas_hw: tuple[int, int], strides) -> list[tuple[int, int]]:
  """Feature map size of each level for an input of `canvas_hw` pixels.

  Every stride-2 conv and pool in ResNet and FPN uses padding that gives
  ceil(n / 2), so a level of stride 2^k has ceil(n / 2^k) cells.
  """
  sizes = []
  for s in strides:
    k = int(np.log2(s))
    if 2 ** k != s:
      raise errors.ConfigError(f"strides must be powers of two, got {s}.")
    h, w = canvas_hw
    for _ in range(k):
      h, w = -(-h // 2), -(-w // 2)
    sizes.append((h, w))
  return sizes


@dataclasses.dataclass(frozen=True)
class Locations:
  """Per-location geometry, as NumPy arrays (constants under jit).

  points:      [P, 2] float32 (x, y) in canvas pixels.
  strides:     [P] float32, the stride of the level of each location.
  size_ranges: [P, 2] float32 (lo, hi) on max(l*, t*, r*, b*), pixels.
  level_sizes: ((H_l, W_l), ...) per level.
  level_starts: offset of each level in P; level l is
                [level_starts[l], level_starts[l] + H_l * W_l).
  """

  points: np.ndarray
  strides: np.ndarray
  size_ranges: np.ndarray
  level_sizes: tuple[tuple[int, int], ...]
  level_starts: tuple[int, ...]

  @property
  def num_locations(self) -> int:
    return int(self.points.shape[0])

  def level_slice(self, level: int) -> slice:
    h, w = self.level_sizes[level]
    start = self.level_starts[level]
    return slice(start, start + h * w)


def compute_locations(canvas_hw: tuple[int, int], cfg: ModelConfig) -> Locations:
  """Locations of all levels for a canvas of `canvas_hw` = (H, W) pixels.

  Cell (i, j) of a level with stride s sits at (j*s + s//2, i*s + s//2)
  (official FCOS) or at (j*s, i*s) (torchvision's anchor centres). With
  `cfg.location_stride == "canvas"` the spacing is (W // w_l, H // h_l) for
  a level of h_l x w_l cells, as torchvision's AnchorGenerator computes it;
  `strides` keeps the nominal s (box decoding, centre sampling).
  """
  sizes = level_sizes(canvas_hw, cfg.strides)
  points, strides, ranges, starts = [], [], [], []
  start = 0
  # An assigner without size ranges (ATSS): every level takes every size.
  size_ranges = getattr(cfg.assign, "size_ranges", None) or (
      (-1.0, float("inf")),) * len(cfg.strides)
  for (h, w), s, rng in zip(sizes, cfg.strides, size_ranges):
    offset = s // 2 if cfg.location_offset == "half" else 0
    sy, sx = ((canvas_hw[0] // h, canvas_hw[1] // w)
              if cfg.location_stride == "canvas" else (s, s))
    ys, xs = np.meshgrid(np.arange(h) * sy + offset,
                         np.arange(w) * sx + offset, indexing="ij")
    points.append(np.stack([xs.ravel(), ys.ravel()], axis=-1))
    strides.append(np.full(h * w, s))
    ranges.append(np.tile(np.asarray(rng, np.float64), (h * w, 1)))
    starts.append(start)
    start += h * w
  return Locations(
      points=np.concatenate(points).astype(np.float32),
      strides=np.concatenate(strides).astype(np.float32),
      size_ranges=np.concatenate(ranges).astype(np.float32),
      level_sizes=tuple(sizes),
      level_starts=tuple(starts))
