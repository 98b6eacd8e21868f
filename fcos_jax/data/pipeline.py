"""Training and evaluation input pipelines: tf.data in, NumPy batches out.

How the order is made (all of it a pure function of the seed, the step and
the process index, so hosts agree without talking and resuming is exact):

* Buckets. Each image is assigned, from its size in the annotations, to the
  smallest canvas (H, W) of `data.canvases` that holds it once resized.
  A batch holds one canvas, and the global batch of a step is one array, so
  every process must use the same canvas at a step.
* Per-process slices. Within each bucket the images (in annotation-file
  order) are dealt round-robin to the processes: process p gets the k-th
  image when k % process_count == p. The slices are disjoint and cover the set.
* Training streams. Each process keeps one endless stream per bucket: epoch
  e of bucket b is a permutation of its slice drawn from (seed, p, b, e)
  with `tf.random.experimental.index_shuffle`, so stream position k maps to
  an image without materialising anything, and skipping is an offset.
* Bucket of step t. Drawn from (seed, t) with probabilities proportional to
  the global bucket sizes; the same on every process. The stream offsets at
  a resume step are B times the number of earlier steps of each bucket.
* Flips and scales are stateless draws seeded by (seed, p, b, position).
* Evaluation: every image once, in order, no flip, crowd boxes kept (marked),
  images without boxes kept. Bucket b runs ceil(max_p n_{b,p} / B) steps on
  every process, short processes pad with `example_valid=False` examples;
  buckets run in order, so all processes agree on the canvas of each step.
* Image files are read with `tf.io.read_file` where TensorFlow's own
  filesystems reach them (`storage.tf_reaches`: local paths, and URLs when
  epath goes through TF too), otherwise through `fcos_jax.storage` (e.g.
  gs:// served by gcsfs with EPATH_USE_TF=false) in a `tf.numpy_function`.
* Bad images: with `skip_bad_examples=False` a decode failure stops with a
  `DataError` naming the file; with True it is dropped (the next image of
  the same bucket takes its place), counted and logged. Resume offsets count
  stream positions, so with skipped images before `start_step` a resumed
  run is shifted by that many images (still deterministic).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from fcos_jax.data.tf_setup import tf

from fcos_jax import storage
from fcos_jax.data import transforms
from fcos_jax.data.coco_format import DatasetInfo, ExampleTable
from fcos_jax.data.errors import DataError
from fcos_jax.data.sources import load_split

log = logging.getLogger("fcos_jax.data")

_CHOICE_BLOCK = 4096  # Steps per block of the bucket-choice sequence.


# --- Buckets -------------------------------------------------------------------


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


def assign_buckets(table: ExampleTable, canvases, min_size, max_size: int):
  """[N] canvas index of each image: the smallest canvas that holds it."""
  canvases = [tuple(int(v) for v in c) for c in canvases]
  for c in canvases:
    if len(c) != 2 or c[0] % 32 or c[1] % 32:
      raise DataError(f"data.canvases: {c} must be (H, W) with both a "
                      "multiple of 32 (the largest FPN stride).")
  oh, ow = resized_hw_np(table.heights, table.widths, _max_min_size(min_size),
                         max_size)
  ch = np.asarray([c[0] for c in canvases])[None]
  cw = np.asarray([c[1] for c in canvases])[None]
  # Overflow by a few pixels (rounding at extreme aspect ratios) is clamped.
  over = np.maximum(oh[:, None] - ch, 0) + np.maximum(ow[:, None] - cw, 0)
  area = (ch * cw).astype(np.float64)
  # Least overflow first, then the smallest canvas.
  bucket = np.argmin(over * 1e12 + area, axis=1) if len(oh) else np.zeros(
      0, np.int64)
  worst = over[np.arange(len(oh)), bucket] if len(oh) else np.zeros(0)
  bad = worst > 2 + 0.01 * np.maximum(oh, ow)
  if bad.any():
    i = int(np.argmax(bad))
    raise DataError(
        f"data.canvases {canvases}: image {table.paths[i]} resizes to "
        f"{oh[i]}x{ow[i]}, which fits no canvas. Add a canvas at least that "
        "large (multiples of 32) or lower data.min_size / data.max_size.")
  return bucket.astype(np.int64)


def _choice_cdf(weights) -> np.ndarray:
  weights = np.asarray(weights, np.float64)
  cdf = np.cumsum(weights / weights.sum())
  cdf[-1] = 1.0
  return cdf


def _choices_tf(steps, block, seed: int, cdf: np.ndarray):
  """TF ops: the bucket of each step in `steps` (int64, scalar or [n]), all
  in the block `block` (= step // K).

  Within each block of K steps the buckets appear in proportion to their
  weights (a seeded permutation of evenly spread quantiles), so the mix is
  balanced at every scale and a pure function of (seed, step).
  """
  k = tf.constant(_CHOICE_BLOCK, tf.int64)
  perm = tf.random.experimental.index_shuffle(
      steps % k, tf.stack([tf.constant(seed, tf.int64), block]), k - 1)
  u = (tf.cast(perm, tf.float64) + 0.5) / float(_CHOICE_BLOCK)
  # Bucket = number of cdf entries <= u (searchsorted, side="right").
  above = tf.reshape(u, [-1, 1]) >= tf.constant(cdf, tf.float64)[None, :]
  return tf.reduce_sum(tf.cast(above, tf.int64), axis=1)


def bucket_choices(seed: int, start: int, stop: int, weights) -> np.ndarray:
  """[stop - start] canvas bucket of each step in [start, stop)."""
  cdf = _choice_cdf(weights)
  out = [np.zeros(0, np.int64)]
  for block in range(start // _CHOICE_BLOCK, -(-stop // _CHOICE_BLOCK)):
    lo = max(start, block * _CHOICE_BLOCK)
    hi = min(stop, (block + 1) * _CHOICE_BLOCK)
    steps = tf.range(lo, hi, dtype=tf.int64)
    out.append(_choices_tf(steps, tf.constant(block, tf.int64),
                           seed % (2**62), cdf).numpy())
  return np.concatenate(out)


def _process_slices(bucket: np.ndarray, num_buckets: int, process_index: int,
                    process_count: int) -> list[np.ndarray]:
  """Per bucket, the table indices of this process (round-robin deal)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in "
                     f"[0, process_count={process_count}).")
  return [np.flatnonzero(bucket == b)[process_index::process_count]
          for b in range(num_buckets)]


# --- Per-example graph --------------------------------------------------------


class _TableConstants:
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


def _example_fn(consts: _TableConstants, data_cfg, canvas_hw, train: bool):
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


def _padding_example(canvas_hw, max_boxes: int):
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


def _options(data_cfg) -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  if int(data_cfg.get("private_threadpool_size", 0)) > 0:
    opts.threading.private_threadpool_size = int(
        data_cfg.private_threadpool_size)
  return opts


def _parallel(data_cfg) -> int:
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


# --- The iterator ----------------------------------------------------------------


@dataclasses.dataclass
class _Stream:
  """One bucket stream of one process: its table indices and read offset."""
  members: np.ndarray  # [n_b] table indices of this process in bucket b.
  seed: int  # Base seed of this stream.
  next_pos: int  # Stream position of the next example to come.


class BatchIterator:
  """Iterates NumPy batches (`fcos_jax/batch.py` format) from a tf.data
  pipeline; maps decode failures to the file, counts skips and truncations.

  Attributes: info (DatasetInfo), num_steps (eval: steps per process; train:
  None), num_skipped (distinct images skipped so far: an unreadable image
  counts once, however many epochs meet it), skipped_paths,
  num_truncated_boxes.
  """

  def __init__(self, dataset, table: ExampleTable, info: DatasetInfo,
               streams: list[_Stream], step_buckets, start_step: int,
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


# --- Builders ---------------------------------------------------------------


def _stream_seed(seed: int, process_index: int, bucket: int) -> int:
  return (int(seed) * 1_000_003 + process_index * 1_009 + bucket) % (2**62)


def _train_table(table: ExampleTable, data_cfg) -> ExampleTable:
  if not data_cfg.skip_empty_train:
    return table
  # As the official code: an image needs a non-crowd box wider and taller
  # than 1 pixel.
  big = ((table.boxes[:, 2] - table.boxes[:, 0] > 1) &
         (table.boxes[:, 3] - table.boxes[:, 1] > 1) & ~table.is_crowd)
  counts = np.concatenate([[0], np.cumsum(big, dtype=np.int64)])
  keep = np.diff(counts[table.box_splits]) > 0
  if not keep.any():
    raise DataError("The training split has no image with a usable box. "
                    "Check the annotations or set data.skip_empty_train=False.")
  return table.subset(keep)


def build_train_dataset(data_cfg, process_batch_size: int, process_index: int,
                        process_count: int, seed: int | None = None,
                        start_step: int = 0,
                        categories: list[dict] | None = None,
                        categories_from: str | None = None) -> BatchIterator:
  """Endless training batches for this process, from step `start_step` on.

  process_batch_size: B, images per process and step. seed: order, flips,
  scales and buckets (default data.shuffle_seed). Each batch: uint8 image
  [B, H, W, 3] on one canvas (H, W), the same canvas on all processes at a
  step; boxes [B, M, 4] in canvas pixels (see fcos_jax/batch.py).
  Resuming at start_step yields exactly the batches an uninterrupted run
  yields from that step on. categories (e.g. the run's categories.json,
  named categories_from in errors): the split must have exactly these (see
  `sources.load_split`). Every process must call this (collective on first
  use of a generated dataset).
  """
  seed = int(data_cfg.shuffle_seed if seed is None else seed)
  table, info = load_split(data_cfg, "train", categories, categories_from)
  table = _train_table(table, data_cfg)
  canvases = [tuple(int(v) for v in c) for c in data_cfg.canvases]
  bucket = assign_buckets(table, canvases, data_cfg.min_size, data_cfg.max_size)
  counts = np.bincount(bucket, minlength=len(canvases))
  members = _process_slices(bucket, len(canvases), process_index, process_count)
  for b, m in enumerate(members):
    if counts[b] and not len(m):
      raise DataError(
          f"Training: canvas {canvases[b]} has {counts[b]} image(s), too few "
          f"to give process {process_index} of {process_count} any. Use more "
          "data, fewer processes or drop that canvas from data.canvases.")

  blocks: dict[int, np.ndarray] = {}

  def step_bucket(t):  # For error reports and skip counts: cached by block.
    k = t // _CHOICE_BLOCK
    if k not in blocks:
      blocks[k] = bucket_choices(seed, k * _CHOICE_BLOCK,
                                 (k + 1) * _CHOICE_BLOCK, counts)
    return blocks[k][t % _CHOICE_BLOCK]

  past = bucket_choices(seed, 0, start_step, counts)
  consts = _TableConstants(table)
  par = _parallel(data_cfg)
  B = int(process_batch_size)
  streams, datasets = [], []
  for b, m in enumerate(members):
    s = _Stream(m, _stream_seed(seed, process_index, b),
                int(np.sum(past == b)) * B)
    streams.append(s)
    if not len(m):
      datasets.append(tf.data.Dataset.from_tensors(
          _padding_example(canvases[b], data_cfg.max_boxes)).batch(B))
      continue
    n = len(m)
    m_t = tf.constant(m, tf.int64)
    base = tf.constant(s.seed, tf.int64)

    def locate(pos, m_t=m_t, n=n, base=base):
      i = tf.random.experimental.index_shuffle(
          pos % n, tf.stack([base, pos // n]), tf.constant(n - 1, tf.int64))
      # Scale uses seed (., 2k), flip (., 2k + 1): distinct per position.
      return m_t[i], pos, tf.stack([base, 2 * pos])

    ds = tf.data.Dataset.range(s.next_pos, 2**62).map(locate)
    ds = ds.map(_example_fn(consts, data_cfg, canvases[b], train=True),
                num_parallel_calls=par, deterministic=True)
    if data_cfg.skip_bad_examples:
      ds = ds.ignore_errors(log_warning=True)
    datasets.append(ds.batch(B, drop_remainder=True))

  cdf = _choice_cdf(counts)
  choices = tf.data.Dataset.range(start_step, 2**62).map(
      lambda t: _choices_tf(t, t // _CHOICE_BLOCK, seed % (2**62), cdf)[0])
  ds = tf.data.Dataset.choose_from_datasets(datasets, choices)
  ds = ds.prefetch(int(data_cfg.prefetch)).with_options(_options(data_cfg))
  return BatchIterator(ds, table, info, streams, step_bucket, start_step, B,
                       int(data_cfg.max_boxes), bool(data_cfg.skip_bad_examples),
                       train=True, num_steps=None, name="Training data")


def build_eval_dataset(data_cfg, process_batch_size: int, process_index: int,
                       process_count: int,
                       categories: list[dict] | None = None,
                       categories_from: str | None = None) -> BatchIterator:
  """Evaluation batches: every image exactly once over all processes.

  No flip; short side max(min_size); crowd boxes kept (is_crowd); images
  without boxes kept. Every process runs `num_steps` steps; padding examples
  have example_valid=False and image_id -1. Its categories must be the
  training split's, or `categories` if given (`sources.load_split`).
  """
  table, info = load_split(data_cfg, "val", categories, categories_from)
  canvases = [tuple(int(v) for v in c) for c in data_cfg.canvases]
  bucket = assign_buckets(table, canvases, data_cfg.min_size, data_cfg.max_size)
  counts = np.bincount(bucket, minlength=len(canvases))
  members = _process_slices(bucket, len(canvases), process_index, process_count)
  B = int(process_batch_size)
  # The busiest process of bucket b has ceil(n_b / process_count) images.
  steps = [-(-(-(-int(c) // process_count)) // B) for c in counts]
  consts = _TableConstants(table)
  par = _parallel(data_cfg)
  datasets, streams = [], []
  for b, m in enumerate(members):
    streams.append(_Stream(m, 0, 0))
    if not steps[b]:
      continue
    pad = tf.data.Dataset.from_tensors(
        _padding_example(canvases[b], data_cfg.max_boxes)).repeat()
    m_t = tf.constant(m, tf.int64)
    ds = tf.data.Dataset.range(len(m)).map(
        lambda pos, m_t=m_t: (m_t[pos], pos, tf.stack([pos * 0, 2 * pos])))
    ds = ds.map(_example_fn(consts, data_cfg, canvases[b], train=False),
                num_parallel_calls=par, deterministic=True)
    if data_cfg.skip_bad_examples:
      ds = ds.ignore_errors(log_warning=True)
    datasets.append(ds.concatenate(pad).take(steps[b] * B).batch(B))
  order = np.concatenate([np.full(s, b, np.int64) for b, s in
                          enumerate(steps)]) if sum(steps) else np.zeros(0, int)
  ds = datasets[0] if datasets else tf.data.Dataset.from_tensors(
      _padding_example(canvases[0], data_cfg.max_boxes)).take(0)
  for d in datasets[1:]:
    ds = ds.concatenate(d)
  ds = ds.prefetch(int(data_cfg.prefetch)).with_options(_options(data_cfg))
  return BatchIterator(ds, table, info, streams,
                       lambda t: order[t] if t < len(order) else 0, 0, B,
                       int(data_cfg.max_boxes), bool(data_cfg.skip_bad_examples),
                       train=False, num_steps=int(sum(steps)),
                       name="Evaluation data")


def dataset_info(data_cfg, split: str = "val",
                 categories: list[dict] | None = None,
                 categories_from: str | None = None) -> DatasetInfo:
  """The DatasetInfo of a split without building a pipeline (checked as
  `sources.load_split` checks it).

  With several processes the first call for a generated dataset (synthetic,
  TFDS export) must be made by every process; once a process has made or
  found it, later calls may come from one process alone.
  """
  return load_split(data_cfg, split, categories, categories_from)[1]
