"""A plain-loop reference of the FCOS assignment statistics
(`fcos_jax.analysis.assignment`), for the tests."""

from __future__ import annotations

import numpy as np


def numpy_reference(boxes, classes, usable, points, strides, size_ranges,
                    radius: float, inclusive: bool = True):
  """A plain loop over locations and boxes of one image (for the tests and
  for readers): (recalled [M] bool, count [P], classes_differ [P])."""
  m, p = len(boxes), len(points)
  recalled = np.zeros(m, bool)
  count = np.zeros(p, np.int32)
  differ = np.zeros(p, bool)
  for i in range(p):
    x, y = float(points[i, 0]), float(points[i, 1])
    lo, hi = float(size_ranges[i, 0]), float(size_ranges[i, 1])
    passing = []
    for j in range(m):
      if not usable[j]:
        continue
      x0, y0, x1, y1 = (float(v) for v in boxes[j])
      l, t, r, b = x - x0, y - y0, x1 - x, y1 - y
      if radius > 0:
        cx, cy, rs = (x0 + x1) / 2, (y0 + y1) / 2, float(strides[i]) * radius
        inside = (x > max(cx - rs, x0) and x < min(cx + rs, x1)
                  and y > max(cy - rs, y0) and y < min(cy + rs, y1))
      else:
        inside = min(l, t, r, b) > 0
      big = max(l, t, r, b)
      in_range = lo <= big <= hi if inclusive else lo < big < hi
      if inside and in_range:
        passing.append(j)
    count[i] = len(passing)
    differ[i] = len({int(classes[j]) for j in passing}) > 1
    if passing:
      areas = [(boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
               for j in passing]
      recalled[passing[int(np.argmin(areas))]] = True
  return recalled, count, differ
