"""The training input: endless, shuffled, bucketed batches per process.

* Training streams. Each process keeps one endless stream per bucket: epoch
  e of bucket b is a permutation of its slice drawn from (seed, p, b, e)
  with `tf.random.experimental.index_shuffle`, so stream position k maps to
  an image without materialising anything, and skipping is an offset.
  The stream offsets at a resume step are B times the number of earlier
  steps of each bucket (`buckets.bucket_choices`).
* Flips and scales are stateless draws seeded by (seed, p, b, position).
"""

from __future__ import annotations

import numpy as np

from fcos_jax.data.batch_iterator import BatchIterator, Stream
from fcos_jax.data.buckets import (CHOICE_BLOCK, assign_buckets,
                                   bucket_choices, choice_cdf, choices_tf,
                                   process_slices)
from fcos_jax.data.coco_format import DatasetInfo, ExampleTable
from fcos_jax.errors import DataError
from fcos_jax.data.example_graph import (TableConstants, dataset_options,
                                         example_fn, padding_example,
                                         parallel_calls)
from fcos_jax.data.sources import load_split
from fcos_jax.data.tf_setup import tf


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
                        categories_from: str | None = None,
                        split: tuple[ExampleTable, DatasetInfo] | None = None
                        ) -> BatchIterator:
  """Endless training batches for this process, from step `start_step` on.

  process_batch_size: B, images per process and step. seed: order, flips,
  scales and buckets (default data.shuffle_seed). Each batch: uint8 image
  [B, H, W, 3] on one canvas (H, W), the same canvas on all processes at a
  step; boxes [B, M, 4] in canvas pixels (see fcos_jax/core/batch.py).
  Resuming at start_step yields exactly the batches an uninterrupted run
  yields from that step on. categories (e.g. the run's categories.json,
  named categories_from in errors): the split must have exactly these (see
  `sources.load_split`). split: that function's result, when the caller
  already has it (a big JSON is then not read again). Every process must
  call this (collective on first use of a generated dataset).
  """
  seed = int(data_cfg.shuffle_seed if seed is None else seed)
  table, info = split or load_split(data_cfg, "train", categories,
                                    categories_from)
  table = _train_table(table, data_cfg)
  canvases = [tuple(int(v) for v in c) for c in data_cfg.canvases]
  bucket = assign_buckets(table, canvases, data_cfg.min_size, data_cfg.max_size)
  counts = np.bincount(bucket, minlength=len(canvases))
  members = process_slices(bucket, len(canvases), process_index, process_count)
  for b, m in enumerate(members):
    if counts[b] and not len(m):
      raise DataError(
          f"Training: canvas {canvases[b]} has {counts[b]} image(s), too few "
          f"to give process {process_index} of {process_count} any. Use more "
          "data, fewer processes or drop that canvas from data.canvases.")

  blocks: dict[int, np.ndarray] = {}

  def step_bucket(t):  # For error reports and skip counts: cached by block.
    k = t // CHOICE_BLOCK
    if k not in blocks:
      blocks[k] = bucket_choices(seed, k * CHOICE_BLOCK,
                                 (k + 1) * CHOICE_BLOCK, counts)
    return blocks[k][t % CHOICE_BLOCK]

  past = bucket_choices(seed, 0, start_step, counts)
  consts = TableConstants(table)
  par = parallel_calls(data_cfg)
  B = int(process_batch_size)
  streams, datasets = [], []
  for b, m in enumerate(members):
    s = Stream(m, _stream_seed(seed, process_index, b),
                int(np.sum(past == b)) * B)
    streams.append(s)
    if not len(m):
      datasets.append(tf.data.Dataset.from_tensors(
          padding_example(canvases[b], data_cfg.max_boxes)).batch(B))
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
    ds = ds.map(example_fn(consts, data_cfg, canvases[b], train=True),
                num_parallel_calls=par, deterministic=True)
    if data_cfg.skip_bad_examples:
      ds = ds.ignore_errors(log_warning=True)
    datasets.append(ds.batch(B, drop_remainder=True))

  cdf = choice_cdf(counts)
  choices = tf.data.Dataset.range(start_step, 2**62).map(
      lambda t: choices_tf(t, t // CHOICE_BLOCK, seed % (2**62), cdf)[0])
  ds = tf.data.Dataset.choose_from_datasets(datasets, choices)
  ds = ds.prefetch(int(data_cfg.prefetch)).with_options(dataset_options(data_cfg))
  return BatchIterator(ds, table, info, streams, step_bucket, start_step, B,
                       int(data_cfg.max_boxes), bool(data_cfg.skip_bad_examples),
                       train=True, num_steps=None, name="Training data")
