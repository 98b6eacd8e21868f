"""The batch iterator: tf.data batches as NumPy, decode failures mapped to
the file.

* Bad images: with `skip_bad_examples=False` a decode failure stops with a
  `DataError` naming the file; with True it is dropped (the next image of
  the same bucket takes its place), counted and logged. Resume offsets count
  stream positions, so with skipped images before `start_step` a resumed
  run is shifted by that many images (still deterministic).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from fcos_jax.data.coco_format import DatasetInfo, ExampleTable
from fcos_jax.errors import DataError
from fcos_jax.data.example_graph import check_image
from fcos_jax.data.tf_setup import tf

log = logging.getLogger("fcos_jax.data")


@dataclasses.dataclass
class Stream:
  """One bucket stream of one process: its table indices and read offset."""
  members: np.ndarray  # [n_b] table indices of this process in bucket b.
  seed: int  # Base seed of this stream.
  next_pos: int  # Stream position of the next example to come.


class BatchIterator:
  """Iterates NumPy batches (`fcos_jax/core/batch.py` format) from a tf.data
  pipeline; maps decode failures to the file, counts skips and truncations.

  Attributes: info (DatasetInfo), num_steps (eval: steps per process; train:
  None), num_skipped (distinct images skipped so far: an unreadable image
  counts once, however many epochs meet it), skipped_paths,
  num_truncated_boxes.
  """

  def __init__(self, dataset, table: ExampleTable, info: DatasetInfo,
               streams: list[Stream], step_buckets, start_step: int,
               batch_size: int, max_boxes: int, skip: bool, train: bool,
               num_steps: int | None, name: str):
    self.info = info
    self.num_steps = num_steps
    self._skipped: set[int] = set()  # Table indices of skipped images.
    self.num_truncated_boxes = 0
    self._dataset = dataset
    self._it = iter(dataset)
    self._table = table
    self._streams = streams
    self._step_buckets = step_buckets  # step -> bucket.
    self._step = start_step
    self._batch_size = batch_size
    self._max_boxes = max_boxes
    self._skip = skip
    self._train = train
    self._name = name

  def __iter__(self):
    return self

  @property
  def num_skipped(self) -> int:
    return len(self._skipped)

  @property
  def skipped_paths(self) -> list[str]:
    return [str(self._table.paths[i]) for i in sorted(self._skipped)]

  def _table_index(self, b: int, pos: np.ndarray) -> np.ndarray:
    s = self._streams[b]
    n = len(s.members)
    if not self._train:
      return s.members[pos]
    # The graph's mapping (see `locate` in build_train_dataset), eagerly.
    perm = [int(tf.random.experimental.index_shuffle(
        tf.constant(int(p) % n, tf.int64),
        tf.constant([s.seed, int(p) // n], tf.int64),
        tf.constant(n - 1, tf.int64))) for p in pos]
    return s.members[np.asarray(perm, np.int64)]

  def __next__(self) -> dict[str, np.ndarray]:
    b = int(self._step_buckets(self._step))
    try:
      batch = next(self._it)
    except StopIteration:
      raise
    except tf.errors.OpError as e:
      self._raise_bad_image(b, e)
    batch = {k: v.numpy() for k, v in batch.items()}
    pos = batch.pop("pos")
    n_boxes = batch.pop("num_boxes")
    self._count_skips(b, pos)
    over = int(np.maximum(n_boxes - self._max_boxes, 0).sum())
    if over:
      self.num_truncated_boxes += over
      log.warning("%s: dropped %d box(es) beyond data.max_boxes=%d at step %d "
                  "(%d so far); raise max_boxes to keep them.", self._name,
                  over, self._max_boxes, self._step, self.num_truncated_boxes)
    self._step += 1
    return batch

  def _count_skips(self, b: int, pos: np.ndarray) -> None:
    """Stream positions missing from a batch are images dropped by
    `ignore_errors`; each distinct image is counted once."""
    stream = self._streams[b]
    real = pos[pos >= 0]
    if not self._train and (pos < 0).any():
      end = len(stream.members)  # Padding: this bucket's images are all done.
    elif len(real):
      end = int(real[-1]) + 1
    else:
      return
    missing = sorted(set(range(stream.next_pos, end)) - set(real.tolist()))
    stream.next_pos = end
    if not missing:
      return
    new = set(self._table_index(b, np.asarray(missing, np.int64)).tolist())
    new -= self._skipped
    if new:
      self._skipped |= new
      log.warning("%s: skipped %d distinct unreadable image(s) so far (decode "
                  "failures; data.skip_bad_examples=True), now: %s",
                  self._name, self.num_skipped,
                  ", ".join(str(self._table.paths[i]) for i in sorted(new)[:5]))

  def _raise_bad_image(self, b: int, error):
    """Finds which image of the failing batch is bad and names it."""
    stream = self._streams[b]
    pos = np.arange(stream.next_pos, stream.next_pos + self._batch_size)
    if not self._train:
      pos = pos[pos < len(stream.members)]
    for i in self._table_index(b, pos):
      problem = check_image(self._table.paths[i],
                            (self._table.heights[i], self._table.widths[i]))
      if problem:
        raise DataError(
            f"{self._name}: image {self._table.paths[i]} (image id "
            f"{self._table.image_ids[i]}) cannot be used: {problem}. Replace "
            "or remove the file (or its entry in the annotations), or set "
            "data.skip_bad_examples=True to skip such images (counted and "
            "logged).") from error
    raise error
