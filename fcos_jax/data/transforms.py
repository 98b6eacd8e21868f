"""Per-example transforms in TF ops: decode, box clean-up, resize, flip, pad.

Boxes are (x0, y0, x1, y1) in continuous pixel coordinates: a COCO box
[x, y, w, h] is (x, y, x + w, y + h), and a flip maps x to (width - x).
Randomness is stateless: every example carries its own seed, so the same
example at the same stream position gets the same flip and scale after a
resume.
"""

from __future__ import annotations

from fcos_jax.data.tf_setup import tf


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """JPEG (incl. grayscale, CMYK), PNG, BMP, GIF bytes -> uint8 [h, w, 3] RGB."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def clean_boxes(boxes, classes, is_crowd, image_hw, drop_crowd: bool):
  """Clips boxes [n, 4] to the image, drops degenerate and (opt.) crowd ones.

  image_hw: [2] int (h, w) of the decoded image. Returns boxes [k, 4],
  classes [k], is_crowd [k].
  """
  h = tf.cast(image_hw[0], tf.float32)
  w = tf.cast(image_hw[1], tf.float32)
  boxes = tf.stack([tf.clip_by_value(boxes[:, 0], 0.0, w),
                    tf.clip_by_value(boxes[:, 1], 0.0, h),
                    tf.clip_by_value(boxes[:, 2], 0.0, w),
                    tf.clip_by_value(boxes[:, 3], 0.0, h)], axis=-1)
  keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  if drop_crowd:
    keep &= tf.logical_not(is_crowd)
  return (tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep),
          tf.boolean_mask(is_crowd, keep))


def resized_hw(image_hw, min_size, max_size: int):
  """Official FCOS / maskrcnn-benchmark `Resize.get_size`, in TF ops.

  Short side to `min_size` unless the long side would pass `max_size`, then
  short side = round(max_size * short / long) (round half to even, as
  Python's round); the other side truncated: int(size * long / short). An
  image whose short side already equals the size is left as it is.
  image_hw: [2] int, min_size: scalar int. Returns [2] int32 (h, w).
  """
  h = tf.cast(image_hw[0], tf.float64)
  w = tf.cast(image_hw[1], tf.float64)
  size = tf.cast(min_size, tf.float64)
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  size = tf.where(long / short * size > max_size,
                  tf.round(max_size * short / long), size)
  scaled_long = tf.floor(size * long / short)
  oh = tf.where(w < h, scaled_long, size)
  ow = tf.where(w < h, size, scaled_long)
  unchanged = tf.equal(short, size)
  oh = tf.where(unchanged, h, oh)
  ow = tf.where(unchanged, w, ow)
  return tf.cast(tf.stack([oh, ow]), tf.int32)


def resize_image(image, out_hw):
  """Bilinear resize with antialiasing (as PIL's, used by the official code);
  a no-op when the size is unchanged. uint8 [h, w, 3] -> uint8 [oh, ow, 3]."""
  same = tf.reduce_all(tf.equal(tf.shape(image)[:2], out_hw))

  shrink = tf.reduce_any(out_hw < tf.shape(image)[:2])

  def _resize():
    # Antialiasing changes nothing when enlarging, and its kernel is several
    # times slower than plain bilinear: use it only to shrink.
    out = tf.cond(
        shrink,
        lambda: tf.image.resize(image, out_hw, "bilinear", antialias=True),
        lambda: tf.image.resize(image, out_hw, "bilinear"))
    return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)

  return tf.cond(same, lambda: image, _resize)


def scale_boxes(boxes, in_hw, out_hw):
  """Boxes [n, 4] scaled by (out_w / in_w, out_h / in_h)."""
  in_hw = tf.cast(in_hw, tf.float32)
  out_hw = tf.cast(out_hw, tf.float32)
  sy, sx = out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]
  return boxes * tf.stack([sx, sy, sx, sy])


def flip_left_right(image, boxes, flip):
  """Mirrors image [h, w, 3] and boxes [n, 4] when the bool `flip` is set."""
  w = tf.cast(tf.shape(image)[1], tf.float32)
  flipped = tf.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0],
                      boxes[:, 3]], axis=-1)
  image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  return image, tf.where(flip, flipped, boxes)


def pad_image(image, canvas_hw):
  """uint8 [h, w, 3] at the top-left of a zero canvas [H, W, 3]."""
  shape = tf.shape(image)
  return tf.pad(image, [[0, canvas_hw[0] - shape[0]],
                        [0, canvas_hw[1] - shape[1]], [0, 0]])


def pad_boxes(boxes, classes, is_crowd, max_boxes: int):
  """Pads/truncates to M = max_boxes rows; returns the padded arrays, the
  valid mask [M] and the count before truncation."""
  n = tf.shape(boxes)[0]
  k = tf.minimum(n, max_boxes)
  pad = max_boxes - k
  boxes = tf.pad(boxes[:k], [[0, pad], [0, 0]])
  classes = tf.pad(classes[:k], [[0, pad]])
  is_crowd = tf.pad(is_crowd[:k], [[0, pad]])
  valid = tf.range(max_boxes) < k
  boxes.set_shape([max_boxes, 4])
  classes.set_shape([max_boxes])
  is_crowd.set_shape([max_boxes])
  return boxes, classes, is_crowd, valid, n


def transform_example(encoded, boxes, classes, is_crowd, image_id, json_hw,
                      canvas_hw, seed, *, train: bool, min_size, max_size: int,
                      flip_prob: float, max_boxes: int):
  """One example, from encoded bytes to the padded per-example batch entry.

  boxes [n, 4] float32 original pixels, classes [n] int32, is_crowd [n] bool,
  json_hw [2] the size the annotations claim, canvas_hw [2] the bucket,
  seed [2] int64 for the stateless draws. min_size: int or (lo, hi).
  Returns a dict of the `fcos_jax/core/batch.py` entries (no batch axis) plus
  "num_boxes" (boxes before truncation to max_boxes).
  """
  image = decode_image(encoded)
  orig_hw = tf.shape(image)[:2]
  tf.debugging.assert_equal(
      orig_hw, tf.cast(json_hw, tf.int32),
      message="decoded image size differs from the annotations' width/height")
  boxes, classes, is_crowd = clean_boxes(boxes, classes, is_crowd, orig_hw,
                                         drop_crowd=train)
  if isinstance(min_size, (tuple, list)):
    lo, hi = int(min_size[0]), int(min_size[1])
    size = (tf.random.stateless_uniform([], seed=seed, minval=lo,
                                        maxval=hi + 1, dtype=tf.int32)
            if train else hi)
  else:
    size = int(min_size)
  out_hw = resized_hw(orig_hw, size, max_size)
  # Extreme aspect ratios can round a pixel or so past the canvas: clamp.
  out_hw = tf.minimum(out_hw, tf.cast(canvas_hw, tf.int32))
  image = resize_image(image, out_hw)
  boxes = scale_boxes(boxes, orig_hw, out_hw)
  if train and flip_prob > 0:
    flip = tf.random.stateless_uniform(
        [], seed=seed + tf.constant([0, 1], tf.int64)) < flip_prob
    image, boxes = flip_left_right(image, boxes, flip)
  image = pad_image(image, canvas_hw)
  boxes, classes, is_crowd, valid, n = pad_boxes(boxes, classes, is_crowd,
                                                 max_boxes)
  return {
      "image": image, "image_hw": out_hw, "orig_hw": orig_hw,
      "boxes": boxes, "classes": classes, "box_valid": valid,
      "is_crowd": is_crowd, "image_id": tf.cast(image_id, tf.int32),
      "example_valid": tf.constant(True), "num_boxes": n,
  }
