"""One entry point over the three sources: (ExampleTable, DatasetInfo).

The synthetic set and the TFDS export are written once, by process 0 of a
multi-process run while the others wait (`runtime.chief_first`); then every
process reads the finished files. The validation split's categories are
checked against the training split's (or a given list, e.g. the run's
categories.json): the labels the model learnt are the training split's, so
any other list would score the wrong classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fcos_jax import runtime
from fcos_jax.data import buckets
from fcos_jax.data import categories as categories_lib
from fcos_jax.data.coco_format import (DatasetInfo, ExampleTable,
                                       dataset_info_of_file, load_coco_split)
from fcos_jax.data.problems import Problems
from fcos_jax.errors import DataError

SOURCES = ("synthetic", "coco_format", "tfds")

# Data made (or found finished) in this process, by what it is made from.
# Every process makes the same sequence of collective calls, so after the
# first call for a key all processes know the data is there: later calls,
# including one made by process 0 alone (e.g. the chief reading the val
# DatasetInfo for COCO evaluation), need no barrier and cannot deadlock.
_MADE: dict[tuple, object] = {}


def _once(key: tuple, make, done, name: str):
  """`make()` on process 0, then on the others (which find it finished).

  The first call for `key` in a process is a collective (every process
  must make it); later ones return the remembered result while `done()`
  still holds.
  """
  if key in _MADE and done():
    return _MADE[key]
  result = runtime.chief_first(make, name=name)
  _MADE[key] = result
  return result


def _synthetic_files(data_cfg) -> dict[str, str]:
  from fcos_jax.data import synthetic
  s = data_cfg.synthetic
  params = synthetic.dataset_params(s.num_train, s.num_val, s.image_size,
                                    s.seed)
  return _once(
      ("synthetic", str(s.dir), repr(sorted(params.items()))),
      lambda: synthetic.ensure_synthetic_dataset(
          s.dir, num_train=s.num_train, num_val=s.num_val,
          image_size=s.image_size, seed=s.seed),
      lambda: synthetic.is_complete(s.dir, params), name="synthetic_data")


def _tfds_split_name(data_cfg, split: str) -> str:
  t = data_cfg.tfds
  return t.train_split if split == "train" else t.val_split


def _tfds_files(data_cfg, split: str) -> tuple[str, str]:
  from fcos_jax.data import tfds_coco
  t = data_cfg.tfds
  args = (t.name, _tfds_split_name(data_cfg, split), t.data_dir or None,
          t.export_dir or None)
  return _once(("tfds",) + args, lambda: tfds_coco.export_tfds_split(*args),
               lambda: tfds_coco.is_exported(*args), name="tfds_export")


def split_files(data_cfg, split: str) -> tuple[str, str, str]:
  """(annotations json, image folder, ground-truth json) of a split.

  split: "train" or "val". Makes the synthetic set / the TFDS export on
  first use: the first call for a dataset is collective (every process of
  a multi-process run must make it; process 0 writes, the others wait).
  """
  if split not in ("train", "val"):
    raise ValueError(f"split={split!r}: must be 'train' or 'val'.")
  if data_cfg.source == "synthetic":
    files = _synthetic_files(data_cfg)
    return files[f"{split}_json"], files[f"{split}_images"], files[
        f"{split}_json"]
  if data_cfg.source == "coco_format":
    js, im = data_cfg.coco[f"{split}_json"], data_cfg.coco[f"{split}_images"]
    if not js or not im:
      raise DataError(f"data.source='coco_format' needs data.coco.{split}_json "
                      f"and data.coco.{split}_images (got {js!r}, {im!r}).")
    return js, im, js
  if data_cfg.source == "tfds":
    js, im = _tfds_files(data_cfg, split)
    t = data_cfg.tfds
    gt = t.val_gt_json if split == "val" and t.val_gt_json else js
    return js, im, gt
  raise DataError(f"data.source={data_cfg.source!r}: must be one of {SOURCES}.")


def training_categories(data_cfg) -> tuple[list[dict], str]:
  """The training split's categories [{"id", "name"}] in label order, and
  where they come from (for messages).

  TFDS: the fixed 80 COCO categories of every export (the training split is
  not exported for this). Otherwise the training JSON's "categories", read
  at most once while the file is unchanged.
  """
  if data_cfg.source == "tfds":
    from fcos_jax.data import tfds_coco
    return tfds_coco.categories(), (
        f"the training split {data_cfg.tfds.train_split!r} of TFDS "
        f"{data_cfg.tfds.name!r} (the 80 COCO categories)")
  if data_cfg.source == "coco_format" and not data_cfg.coco.train_json:
    raise DataError(
        "The evaluation split's categories must be those the model was "
        "trained on, and data.coco.train_json is not set: set it to the "
        "training annotations (only its 'categories' are read), or pass the "
        "run's categories (WORKDIR/categories.json) to load_split.")
  js = split_files(data_cfg, "train")[0]
  info = dataset_info_of_file(js)
  return categories_lib.as_records(info), f"the training split {js}"


def load_split(data_cfg, split: str, categories: list[dict] | None = None,
               categories_from: str | None = None
               ) -> tuple[ExampleTable, DatasetInfo]:
  """The example table and DatasetInfo of a split of the configured source.

  categories: the [{"id", "name"}] the split must have (e.g. the run's
  WORKDIR/categories.json), named `categories_from` in errors. By default
  the "val" split is checked against the training split's categories (and
  a separate ground-truth JSON, data.tfds.val_gt_json, too), "train"
  against nothing. A mismatch is a DataError naming the ids on each side.
  """
  js, im, gt = split_files(data_cfg, split)
  skip = bool(data_cfg.skip_bad_examples)
  table, info = load_coco_split(
      js, im, skip_bad=skip,
      allow_outside_paths=bool(data_cfg.get("allow_outside_paths", False)))
  table = _without_unfit_images(table, data_cfg, js, skip)
  _check_not_empty(table, data_cfg, split, js)
  if categories is None and split == "val":
    categories, categories_from = training_categories(data_cfg)
  if categories is not None:
    expected_from = categories_from or "the given categories"
    categories_lib.check_categories(categories, info, js, expected_from)
    if gt != js:
      categories_lib.check_categories(categories, dataset_info_of_file(gt),
                                      gt, expected_from)
  return table, dataclasses.replace(info, gt_json=gt)


def _without_unfit_images(table: ExampleTable, data_cfg, js: str,
                          skip: bool) -> ExampleTable:
  """The table without images the resize rule cannot put on any canvas
  (a 3x5000 strip, a 0-pixel side): a DataError naming the first, or with
  data.skip_bad_examples those images dropped, counted and logged."""
  bad = buckets.fit_problems(table, data_cfg.canvases, data_cfg.min_size,
                             data_cfg.max_size)
  if not bad:
    return table
  problems = Problems(skip, js)
  for i, why in bad:
    problems.add(f"image {int(table.image_ids[i])} ({table.paths[i]}): {why}",
                 images=[i])
  problems.report()
  keep = np.ones(len(table), bool)
  keep[[i for i, _ in bad]] = False
  return table.subset(keep)


def _check_not_empty(table: ExampleTable, data_cfg, split: str, js: str):
  """A split with no image, or no (non-crowd) box, is refused in one line:
  training would learn nothing, and COCO evaluation of no ground truth is
  undefined (pycocotools reports AP -1, which reads like a score)."""
  skipped = (" after skipping bad ones (data.skip_bad_examples=True)"
             if data_cfg.skip_bad_examples else "")
  if not len(table):
    raise DataError(
        f"The {split} split {js} has no images{skipped}: nothing to "
        f"{'train on' if split == 'train' else 'evaluate or analyze'}. "
        "Point the data config at a split with images.")
  if not (~table.is_crowd).any():
    raise DataError(
        f"The {split} split {js} has {len(table)} image(s) but no "
        f"(non-crowd) box{skipped}: "
        f"{'there is nothing to learn' if split == 'train' else 'COCO AP is undefined without ground truth'}. "
        "Add annotations or point the data config at another split.")
