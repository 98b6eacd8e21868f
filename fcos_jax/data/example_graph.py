"""The tf.data graph of one example: table lookups, file reading, transforms.

* Image files are read with `tf.io.read_file` where TensorFlow's own
  filesystems reach them (`storage.tf_reaches`: local paths, and URLs when
  epath goes through TF too), otherwise through `fcos_jax.storage` (e.g.
  gs:// served by gcsfs with EPATH_USE_TF=false) in a `tf.numpy_function`.
* `check_image` decodes one file eagerly, to name a bad image.
"""

from __future__ import annotations

import numpy as np

from fcos_jax import storage
from fcos_jax.data import transforms
from fcos_jax.data.coco_format import ExampleTable
from fcos_jax.errors import DataError
from fcos_jax.data.tf_setup import tf


class TableConstants:
  """The example table as TF constants, for lookups inside the graph."""

  def __init__(self, table: ExampleTable):
    self.paths = tf.constant(table.paths.astype(str) if len(table)
                             else np.zeros(0, str))
    self.image_ids = tf.constant(table.image_ids, tf.int64)
    self.hw = tf.constant(np.stack([table.heights, table.widths], -1)
                          .reshape(-1, 2), tf.int64)
    self.splits = tf.constant(table.box_splits, tf.int64)
    self.boxes = tf.constant(table.boxes.reshape(-1, 4), tf.float32)
    self.classes = tf.constant(table.classes, tf.int32)
    self.is_crowd = tf.constant(table.is_crowd, tf.bool)
    # One reader for the whole table: TF's own where it reaches every path.
    self.tf_reads = all(storage.tf_reaches(p) for p in table.paths)


def _read_through_storage(path):
  """tf.string scalar path -> its bytes, read by `storage.read_bytes`."""

  def read(p):
    return np.asarray(storage.read_bytes(p.decode()), dtype=object)

  out = tf.numpy_function(read, [path], tf.string, stateful=False,
                          name="storage_read")
  out.set_shape([])
  return out


def read_file(path: str):
  """Eagerly: the bytes of `path` as a tf.string, by the reader the
  pipeline uses for it."""
  if storage.tf_reaches(path):
    return tf.io.read_file(path)
  return tf.constant(storage.read_bytes(path))


def example_fn(consts: TableConstants, data_cfg, canvas_hw, train: bool):
  """(table index, position, seed [2]) -> transformed example dict."""

  read = tf.io.read_file if consts.tf_reads else _read_through_storage

  def fn(index, pos, seed):
    lo, hi = consts.splits[index], consts.splits[index + 1]
    ex = transforms.transform_example(
        read(consts.paths[index]), consts.boxes[lo:hi],
        consts.classes[lo:hi], consts.is_crowd[lo:hi], consts.image_ids[index],
        consts.hw[index], tf.constant(canvas_hw, tf.int32), seed, train=train,
        min_size=_as_min_size(data_cfg.min_size),
        max_size=int(data_cfg.max_size), flip_prob=float(data_cfg.flip_prob),
        max_boxes=int(data_cfg.max_boxes))
    ex["pos"] = pos
    return ex

  return fn


def _as_min_size(min_size):
  if isinstance(min_size, (tuple, list)):
    if len(min_size) != 2 or int(min_size[0]) > int(min_size[1]):
      raise DataError(f"data.min_size={tuple(min_size)}: give an int or a "
                      "(lo, hi) range with lo <= hi.")
    return (int(min_size[0]), int(min_size[1]))
  return int(min_size)


def padding_example(canvas_hw, max_boxes: int):
  h, w = canvas_hw
  m = max_boxes
  return {
      "image": tf.zeros([h, w, 3], tf.uint8),
      "image_hw": tf.zeros([2], tf.int32), "orig_hw": tf.zeros([2], tf.int32),
      "boxes": tf.zeros([m, 4], tf.float32), "classes": tf.zeros([m], tf.int32),
      "box_valid": tf.zeros([m], tf.bool), "is_crowd": tf.zeros([m], tf.bool),
      "image_id": tf.constant(-1, tf.int32),
      "example_valid": tf.constant(False), "num_boxes": tf.constant(0, tf.int32),
      "pos": tf.constant(-1, tf.int64),
  }


def dataset_options(data_cfg) -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  if int(data_cfg.get("private_threadpool_size", 0)) > 0:
    opts.threading.private_threadpool_size = int(
        data_cfg.private_threadpool_size)
  return opts


def parallel_calls(data_cfg) -> int:
  n = int(data_cfg.num_parallel_calls)
  return tf.data.AUTOTUNE if n < 0 else n


def check_image(path: str, json_hw) -> str | None:
  """Reads and decodes one image eagerly; the problem as text, or None."""
  try:
    image = transforms.decode_image(read_file(path))
  except (tf.errors.OpError, ValueError, OSError) as e:
    return f"{type(e).__name__}: {getattr(e, 'message', str(e))}".strip()
  if tuple(image.shape[:2]) != tuple(int(v) for v in json_hw):
    return (f"decoded size {tuple(image.shape[:2])} differs from the "
            f"annotations' (height, width) {tuple(int(v) for v in json_hw)}")
  return None
