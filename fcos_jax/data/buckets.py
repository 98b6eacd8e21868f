"""Which canvas each image goes to, and which canvas each step uses.

* Buckets. Each image is assigned, from its size in the annotations, to the
  smallest canvas (H, W) of `data.canvases` that holds it once resized.
  A batch holds one canvas, and the global batch of a step is one array, so
  every process must use the same canvas at a step.
* Per-process slices. Within each bucket the images (in annotation-file
  order) are dealt round-robin to the processes: process p gets the k-th
  image when k % process_count == p. The slices are disjoint and cover the set.
* Bucket of step t. Drawn from (seed, t) with probabilities proportional to
  the global bucket sizes; the same on every process.
"""

from __future__ import annotations

import numpy as np

from fcos_jax.errors import DataError
from fcos_jax.data.coco_format import ExampleTable
from fcos_jax.data.tf_setup import tf

CHOICE_BLOCK = 4096  # Steps per block of the bucket-choice sequence.


def _max_min_size(min_size) -> int:
  return int(max(min_size)) if isinstance(min_size, (tuple, list)) else int(
      min_size)


def resized_hw_np(heights, widths, min_size: int, max_size: int):
  """NumPy twin of `transforms.resized_hw` for [N] sizes; (oh [N], ow [N])."""
  h = np.asarray(heights, np.float64)
  w = np.asarray(widths, np.float64)
  short, long = np.minimum(h, w), np.maximum(h, w)
  size = np.where(long / short * min_size > max_size,
                  np.round(max_size * short / long), float(min_size))
  scaled = np.floor(size * long / short)
  oh = np.where(w < h, scaled, size)
  ow = np.where(w < h, size, scaled)
  same = short == size
  return (np.where(same, h, oh).astype(np.int64),
          np.where(same, w, ow).astype(np.int64))


def _fit(heights, widths, canvases, min_size, max_size: int):
  """(canvases, oh [N], ow [N], bucket [N], bad [N]) of images of these
  sizes: each image's resized size, its canvas (least overflow, then the
  smallest) and whether it fits none (or resizes to nothing)."""
  canvases = [tuple(int(v) for v in c) for c in canvases]
  for c in canvases:
    if len(c) != 2 or c[0] % 32 or c[1] % 32:
      raise DataError(f"data.canvases: {c} must be (H, W) with both a "
                      "multiple of 32 (the largest FPN stride).")
  heights = np.asarray(heights, np.int64)
  widths = np.asarray(widths, np.int64)
  with np.errstate(divide="ignore", invalid="ignore"):
    oh, ow = resized_hw_np(np.maximum(heights, 1), np.maximum(widths, 1),
                           _max_min_size(min_size), max_size)
  ch = np.asarray([c[0] for c in canvases])[None]
  cw = np.asarray([c[1] for c in canvases])[None]
  # Overflow by a few pixels (rounding at extreme aspect ratios) is clamped.
  over = np.maximum(oh[:, None] - ch, 0) + np.maximum(ow[:, None] - cw, 0)
  area = (ch * cw).astype(np.float64)
  # Least overflow first, then the smallest canvas.
  bucket = np.argmin(over * 1e12 + area, axis=1) if len(oh) else np.zeros(
      0, np.int64)
  worst = over[np.arange(len(oh)), bucket] if len(oh) else np.zeros(0)
  bad = ((worst > 2 + 0.01 * np.maximum(oh, ow)) | (oh < 1) | (ow < 1) |
         (heights < 1) | (widths < 1))
  return canvases, oh, ow, bucket, bad


def fit_problem(h: int, w: int, oh: int, ow: int, canvases, min_size,
                max_size: int) -> str:
  """Why an h x w image that resizes to oh x ow fits no canvas: an extreme
  shape (the resize rule leaves a side under a pixel or the long side past
  every canvas) or canvases too small for ordinary images."""
  if h < 1 or w < 1:
    return f"the image is empty ({h}x{w} pixels)"
  ratio = max(h, w) / min(h, w)
  biggest = max(max(c) for c in canvases)
  if oh < 1 or ow < 1 or ratio > biggest / 32:
    return (f"a {h}x{w} image (aspect ratio {ratio:.0f}:1) resizes to "
            f"{oh}x{ow} under data.min_size={min_size}, data.max_size="
            f"{max_size}; no detector input can hold it. Crop or pad it to a "
            "usual aspect ratio")
  return (f"it resizes to {oh}x{ow}, which fits no canvas of "
          f"data.canvases {list(canvases)}. Add a canvas at least that large "
          "(multiples of 32) or lower data.min_size / data.max_size")


def fit_problems(table: ExampleTable, canvases, min_size, max_size: int
                 ) -> list[tuple[int, str]]:
  """(index, why) of every image of `table` that fits no canvas."""
  canvases, oh, ow, _, bad = _fit(table.heights, table.widths, canvases,
                                  min_size, max_size)
  return [(int(i), fit_problem(int(table.heights[i]), int(table.widths[i]),
                               int(oh[i]), int(ow[i]), canvases, min_size,
                               max_size)) for i in np.flatnonzero(bad)]


def assign_buckets(table: ExampleTable, canvases, min_size, max_size: int):
  """[N] canvas index of each image: the smallest canvas that holds it.
  DataError naming the first image that fits none (`fit_problem`)."""
  canvases, oh, ow, bucket, bad = _fit(table.heights, table.widths, canvases,
                                       min_size, max_size)
  if bad.any():
    i = int(np.argmax(bad))
    raise DataError(
        f"{table.paths[i]}: " + fit_problem(
            int(table.heights[i]), int(table.widths[i]), int(oh[i]),
            int(ow[i]), canvases, min_size, max_size) + ".")
  return bucket.astype(np.int64)


def choice_cdf(weights) -> np.ndarray:
  weights = np.asarray(weights, np.float64)
  cdf = np.cumsum(weights / weights.sum())
  cdf[-1] = 1.0
  return cdf


def choices_tf(steps, block, seed: int, cdf: np.ndarray):
  """TF ops: the bucket of each step in `steps` (int64, scalar or [n]), all
  in the block `block` (= step // K).

  Within each block of K steps the buckets appear in proportion to their
  weights (a seeded permutation of evenly spread quantiles), so the mix is
  balanced at every scale and a pure function of (seed, step).
  """
  k = tf.constant(CHOICE_BLOCK, tf.int64)
  perm = tf.random.experimental.index_shuffle(
      steps % k, tf.stack([tf.constant(seed, tf.int64), block]), k - 1)
  u = (tf.cast(perm, tf.float64) + 0.5) / float(CHOICE_BLOCK)
  # Bucket = number of cdf entries <= u (searchsorted, side="right").
  above = tf.reshape(u, [-1, 1]) >= tf.constant(cdf, tf.float64)[None, :]
  return tf.reduce_sum(tf.cast(above, tf.int64), axis=1)


def bucket_choices(seed: int, start: int, stop: int, weights) -> np.ndarray:
  """[stop - start] canvas bucket of each step in [start, stop)."""
  cdf = choice_cdf(weights)
  out = [np.zeros(0, np.int64)]
  for block in range(start // CHOICE_BLOCK, -(-stop // CHOICE_BLOCK)):
    lo = max(start, block * CHOICE_BLOCK)
    hi = min(stop, (block + 1) * CHOICE_BLOCK)
    steps = tf.range(lo, hi, dtype=tf.int64)
    out.append(choices_tf(steps, tf.constant(block, tf.int64),
                           seed % (2**62), cdf).numpy())
  return np.concatenate(out)


def process_slices(bucket: np.ndarray, num_buckets: int, process_index: int,
                    process_count: int) -> list[np.ndarray]:
  """Per bucket, the table indices of this process (round-robin deal)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in "
                     f"[0, process_count={process_count}).")
  return [np.flatnonzero(bucket == b)[process_index::process_count]
          for b in range(num_buckets)]
