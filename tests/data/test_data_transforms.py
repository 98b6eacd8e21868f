"""Transforms: official resize rule, box/pixel alignment, decoding."""

import io
import random

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from fcos_jax.data import transforms
from fcos_jax.data.pipeline import resized_hw_np


def official_get_size(w, h, size, max_size):
  """Reference: maskrcnn-benchmark / FCOS Resize.get_size, in plain Python."""
  min_original_size = float(min((w, h)))
  max_original_size = float(max((w, h)))
  if max_original_size / min_original_size * size > max_size:
    size = int(round(max_size * min_original_size / max_original_size))
  if (w <= h and w == size) or (h <= w and h == size):
    return (h, w)
  if w < h:
    return (int(size * h / w), size)
  return (size, int(size * w / h))


def test_resized_hw_matches_official_rule():
  rng = random.Random(0)
  cases = [(640, 480), (480, 640), (800, 1333), (1333, 800), (500, 500),
           (427, 640), (640, 427), (3000, 100), (100, 3000), (799, 1400)]
  cases += [(rng.randint(20, 2000), rng.randint(20, 2000)) for _ in range(300)]
  hw = tf.constant([[h, w] for h, w in cases])
  for size, max_size in [(800, 1333), (640, 1333), (256, 400)]:
    # resized_hw is elementwise, so it takes [2, N] as well as [2].
    got = tf.transpose(transforms.resized_hw(tf.transpose(hw), size, max_size))
    want = np.array([official_get_size(w, h, size, max_size) for h, w in cases])
    np.testing.assert_array_equal(got.numpy(), want)
    oh, ow = resized_hw_np(hw.numpy()[:, 0], hw.numpy()[:, 1], size, max_size)
    np.testing.assert_array_equal(np.stack([oh, ow], -1), want)


def _run(image, boxes, train, flip_prob, min_size=90, max_size=150,
         canvas=(128, 160), crowd=None, seed=(3, 4)):
  enc = tf.io.encode_png(tf.constant(image))
  n = len(boxes)
  return transforms.transform_example(
      enc, tf.constant(np.asarray(boxes, np.float32).reshape(-1, 4)),
      tf.zeros([n], tf.int32),
      tf.constant(np.zeros(n, bool) if crowd is None else np.asarray(crowd)),
      tf.constant(7, tf.int64), tf.constant(image.shape[:2], tf.int64),
      tf.constant(canvas, tf.int32), tf.constant(seed, tf.int64), train=train,
      min_size=min_size, max_size=max_size, flip_prob=flip_prob, max_boxes=5)


def _box_from_pixels(image):
  on = image.mean(-1) > 127.5
  ys, xs = np.nonzero(on)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
@pytest.mark.parametrize("hw", [(60, 80), (80, 60)])
def test_box_stays_on_its_pixels(flip_prob, hw):
  h, w = hw
  image = np.zeros((h, w, 3), np.uint8)
  x0, y0, x1, y1 = 11, 17, 43, 39
  image[y0:y1, x0:x1] = 255
  canvas = (128, 160) if h < w else (160, 128)
  ex = _run(image, [[x0, y0, x1, y1]], train=True, flip_prob=flip_prob,
            canvas=canvas)
  out = ex["image"].numpy()
  assert out.shape == canvas + (3,)
  oh, ow = ex["image_hw"].numpy()
  assert (oh, ow) == official_get_size(w, h, 90, 150)[::1]
  assert not out[oh:].any() and not out[:, ow:].any()  # Zero padding.
  found = _box_from_pixels(out)
  np.testing.assert_allclose(ex["boxes"].numpy()[0], found, atol=1.0)
  sx, sy = ow / w, oh / h
  want = np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy])
  if flip_prob:
    want = np.array([ow - want[2], want[1], ow - want[0], want[3]])
  np.testing.assert_allclose(ex["boxes"].numpy()[0], want, atol=1e-4)
  assert ex["box_valid"].numpy().tolist() == [True] + [False] * 4
  assert tuple(ex["orig_hw"].numpy()) == hw


def test_flip_depends_on_seed_only():
  image = np.zeros((60, 80, 3), np.uint8)
  image[5:20, 5:30] = 255
  flips = []
  for s in range(20):
    ex = _run(image, [[5, 5, 30, 20]], train=True, flip_prob=0.5, seed=(1, 2 * s))
    again = _run(image, [[5, 5, 30, 20]], train=True, flip_prob=0.5,
                 seed=(1, 2 * s))
    np.testing.assert_array_equal(ex["boxes"].numpy(), again["boxes"].numpy())
    flips.append(ex["boxes"].numpy()[0, 0] > 40)
  assert 3 < sum(flips) < 17


def test_multiscale_draws_within_range():
  image = np.zeros((60, 80, 3), np.uint8)
  sizes = {int(_run(image, [], train=True, flip_prob=0, min_size=(40, 45),
                    max_size=1000, seed=(0, 2 * s))["image_hw"][0])
           for s in range(30)}
  assert sizes <= set(range(40, 46)) and len(sizes) >= 4
  ev = _run(image, [], train=False, flip_prob=0, min_size=(40, 45),
            max_size=1000)
  assert int(ev["image_hw"][0]) == 45  # Evaluation uses the top of the range.


def test_clean_boxes_clips_drops_degenerate_and_crowd():
  image = np.zeros((60, 80, 3), np.uint8)
  boxes = [[-5, -5, 20, 20],  # Clipped to (0, 0, 20, 20).
           [30, 30, 30, 50],  # Zero width: dropped.
           [10, 10, 90, 70],  # Clipped to (10, 10, 80, 60).
           [40, 5, 50, 15]]  # Crowd.
  crowd = [False, False, False, True]
  tr = _run(image, boxes, train=True, flip_prob=0, min_size=60,
            max_size=1000, crowd=crowd)
  np.testing.assert_allclose(tr["boxes"].numpy()[:2],
                             [[0, 0, 20, 20], [10, 10, 80, 60]])
  assert tr["box_valid"].numpy().sum() == 2
  ev = _run(image, boxes, train=False, flip_prob=0, min_size=60,
            max_size=1000, crowd=crowd)
  assert ev["box_valid"].numpy().sum() == 3
  assert ev["is_crowd"].numpy().tolist() == [False, False, True, False, False]


def test_pad_boxes_truncates_and_counts():
  boxes = tf.reshape(tf.range(28, dtype=tf.float32), [7, 4])
  b, c, crowd, valid, n = transforms.pad_boxes(
      boxes, tf.range(7), tf.zeros([7], tf.bool), 5)
  assert int(n) == 7 and valid.numpy().all()
  np.testing.assert_array_equal(b.numpy(), boxes.numpy()[:5])
  b, c, crowd, valid, n = transforms.pad_boxes(
      boxes[:2], tf.range(2), tf.zeros([2], tf.bool), 5)
  assert valid.numpy().tolist() == [True, True, False, False, False]
  assert not b.numpy()[2:].any()


def _encode(pil_image, fmt):
  buf = io.BytesIO()
  pil_image.save(buf, format=fmt)
  return buf.getvalue()


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"),
                                      ("CMYK", "JPEG"), ("RGB", "PNG"),
                                      ("L", "PNG"), ("RGBA", "PNG")])
def test_decode_formats_give_rgb(mode, fmt):
  rgb = np.zeros((24, 32, 3), np.uint8)
  rgb[:, 16:] = (200, 100, 50)
  pil = Image.fromarray(rgb).convert(mode)
  out = transforms.decode_image(tf.constant(_encode(pil, fmt))).numpy()
  assert out.shape == (24, 32, 3) and out.dtype == np.uint8
  want = np.asarray(pil.convert("RGB"), np.float32)
  assert np.abs(out.astype(np.float32) - want).mean() < 6
