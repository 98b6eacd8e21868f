"""The evaluation input: every image once over all processes, in order.

* No flip, crowd boxes kept (marked), images without boxes kept. Bucket b
  runs ceil(max_p n_{b,p} / B) steps on every process, short processes pad
  with `example_valid=False` examples; buckets run in order, so all
  processes agree on the canvas of each step.
"""

from __future__ import annotations

import numpy as np

from fcos_jax.data.batch_iterator import BatchIterator, Stream
from fcos_jax.data.buckets import assign_buckets, process_slices
from fcos_jax.data.example_graph import (TableConstants, dataset_options,
                                         example_fn, padding_example,
                                         parallel_calls)
from fcos_jax.data.sources import load_split
from fcos_jax.data.tf_setup import tf


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
  members = process_slices(bucket, len(canvases), process_index, process_count)
  B = int(process_batch_size)
  # The busiest process of bucket b has ceil(n_b / process_count) images.
  steps = [-(-(-(-int(c) // process_count)) // B) for c in counts]
  consts = TableConstants(table)
  par = parallel_calls(data_cfg)
  datasets, streams = [], []
  for b, m in enumerate(members):
    streams.append(Stream(m, 0, 0))
    if not steps[b]:
      continue
    pad = tf.data.Dataset.from_tensors(
        padding_example(canvases[b], data_cfg.max_boxes)).repeat()
    m_t = tf.constant(m, tf.int64)
    ds = tf.data.Dataset.range(len(m)).map(
        lambda pos, m_t=m_t: (m_t[pos], pos, tf.stack([pos * 0, 2 * pos])))
    ds = ds.map(example_fn(consts, data_cfg, canvases[b], train=False),
                num_parallel_calls=par, deterministic=True)
    if data_cfg.skip_bad_examples:
      ds = ds.ignore_errors(log_warning=True)
    datasets.append(ds.concatenate(pad).take(steps[b] * B).batch(B))
  order = np.concatenate([np.full(s, b, np.int64) for b, s in
                          enumerate(steps)]) if sum(steps) else np.zeros(0, int)
  ds = datasets[0] if datasets else tf.data.Dataset.from_tensors(
      padding_example(canvases[0], data_cfg.max_boxes)).take(0)
  for d in datasets[1:]:
    ds = ds.concatenate(d)
  ds = ds.prefetch(int(data_cfg.prefetch)).with_options(dataset_options(data_cfg))
  return BatchIterator(ds, table, info, streams,
                       lambda t: order[t] if t < len(order) else 0, 0, B,
                       int(data_cfg.max_boxes), bool(data_cfg.skip_bad_examples),
                       train=False, num_steps=int(sum(steps)),
                       name="Evaluation data")
