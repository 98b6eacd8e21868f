"""Training and evaluation input pipelines: tf.data in, NumPy batches out.

The order is a pure function of the seed, the step and the process index,
so hosts agree without talking and resuming is exact. One module per job:

  buckets.py         which canvas each image and each step gets; the
                     per-process slices
  example_graph.py   the tf.data graph of one example (lookups, reading,
                     transforms) and the eager check of one image
  batch_iterator.py  NumPy batches out; a decode failure named, skips counted
  train_input.py     `build_train_dataset`: endless shuffled streams
  eval_input.py      `build_eval_dataset`: every image once, padded steps

This module is the entry point the rest of the project imports.
"""

from __future__ import annotations

from fcos_jax.data.batch_iterator import BatchIterator
from fcos_jax.data.buckets import assign_buckets, bucket_choices, resized_hw_np
from fcos_jax.data.coco_format import DatasetInfo
from fcos_jax.data.eval_input import build_eval_dataset
from fcos_jax.data.example_graph import check_image, read_file
from fcos_jax.data.sources import load_split
from fcos_jax.data.train_input import build_train_dataset

__all__ = ["BatchIterator", "assign_buckets", "bucket_choices",
           "build_eval_dataset", "build_train_dataset", "check_image",
           "dataset_info", "read_file", "resized_hw_np"]


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
