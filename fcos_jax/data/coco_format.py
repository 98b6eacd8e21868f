"""Any COCO-format detection dataset: an instances JSON + an image folder.

The JSON is read and checked up front in Python (cheap, and bad annotations
get errors that name the annotation id); the images are read and decoded
later in the tf.data graph (`pipeline.py`).

Labels: COCO category ids may be any integers (COCO itself uses 1..90 with
gaps); they map to contiguous labels 0..C-1 in increasing id order, and back
through `DatasetInfo.label_to_category_id`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from fcos_jax.data.errors import DataError, Problems


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the evaluator need to know about a dataset.

  num_classes: C, the number of categories in the annotations.
  label_to_category_id: [C] COCO category id of each contiguous label.
  category_names: [C] names, in label order.
  gt_json: path of the ground-truth instances JSON for COCO evaluation.
  """

  num_classes: int
  label_to_category_id: tuple[int, ...]
  category_names: tuple[str, ...]
  gt_json: str

  @property
  def category_id_to_label(self) -> dict[int, int]:
    return {c: i for i, c in enumerate(self.label_to_category_id)}

  def labels_to_category_ids(self, labels) -> np.ndarray:
    """Contiguous labels (any shape) -> COCO category ids (int64)."""
    return np.asarray(self.label_to_category_id, np.int64)[np.asarray(labels)]


@dataclasses.dataclass
class ExampleTable:
  """The examples of one split, as flat NumPy arrays (N images, T boxes).

  image_ids [N] int64, paths [N] str, heights/widths [N] int64 (from the
  JSON), box_splits [N+1] int64: boxes of image i are rows
  box_splits[i]:box_splits[i+1] of boxes [T, 4] float32 (x0, y0, x1, y1) in
  original-image pixels, classes [T] int32 (contiguous labels), is_crowd [T]
  bool, ann_ids [T] int64.
  """

  image_ids: np.ndarray
  paths: np.ndarray
  heights: np.ndarray
  widths: np.ndarray
  box_splits: np.ndarray
  boxes: np.ndarray
  classes: np.ndarray
  is_crowd: np.ndarray
  ann_ids: np.ndarray

  def __len__(self) -> int:
    return int(self.image_ids.shape[0])

  def num_boxes(self, include_crowd: bool) -> np.ndarray:
    """[N] boxes per image (crowd included or not)."""
    counts = np.diff(self.box_splits)
    if include_crowd:
      return counts
    crowd = np.concatenate([[0], np.cumsum(self.is_crowd, dtype=np.int64)])
    return counts - np.diff(crowd[self.box_splits])

  def subset(self, keep: np.ndarray) -> "ExampleTable":
    """The images at `keep` (indices or bool mask), boxes following."""
    keep = np.arange(len(self))[keep]
    starts, ends = self.box_splits[keep], self.box_splits[keep + 1]
    rows = (np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
            if len(keep) else np.zeros(0, np.int64)).astype(np.int64)
    return ExampleTable(
        image_ids=self.image_ids[keep], paths=self.paths[keep],
        heights=self.heights[keep], widths=self.widths[keep],
        box_splits=np.concatenate([[0], np.cumsum(ends - starts)]).astype(
            np.int64),
        boxes=self.boxes[rows], classes=self.classes[rows],
        is_crowd=self.is_crowd[rows], ann_ids=self.ann_ids[rows])


def _require(obj, keys, what, path):
  if not isinstance(obj, dict):
    raise DataError(f"{path}: {what} must be a JSON object, got "
                    f"{type(obj).__name__}. Fix the annotations file.")
  missing = [k for k in keys if k not in obj]
  if missing:
    raise DataError(f"{path}: {what} lacks required key(s) {missing}. "
                    "Fix the annotations file (COCO instances format).")


def read_coco_json(path: str) -> dict:
  """Loads and shape-checks a COCO instances JSON; DataError on bad input."""
  if not os.path.exists(path):
    raise DataError(f"Annotations file {path!r} does not exist. Set the "
                    "data config path (e.g. data.coco.train_json) to it.")
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: not valid JSON ({e}). Fix or regenerate the "
                    "annotations file.") from e
  _require(data, ("images", "annotations", "categories"), "the top level", path)
  for key in ("images", "annotations", "categories"):
    if not isinstance(data[key], list):
      raise DataError(f"{path}: '{key}' must be a list. Fix the annotations "
                      "file.")
  for im in data["images"]:
    _require(im, ("id", "file_name", "width", "height"),
             f"image {im.get('id', '?') if isinstance(im, dict) else '?'}", path)
  for cat in data["categories"]:
    _require(cat, ("id", "name"), "a category", path)
  for ann in data["annotations"]:
    _require(ann, ("id", "image_id", "category_id", "bbox"),
             f"annotation {ann.get('id', '?') if isinstance(ann, dict) else '?'}",
             path)
  if not data["categories"]:
    raise DataError(f"{path}: 'categories' is empty; list every category "
                    "with its id and name.")
  return data


def dataset_info_from_json(data: dict, gt_json: str) -> DatasetInfo:
  """Contiguous labels in increasing category-id order."""
  cats = sorted(data["categories"], key=lambda c: c["id"])
  ids = [int(c["id"]) for c in cats]
  if len(set(ids)) != len(ids):
    raise DataError(f"{gt_json}: duplicate category ids in 'categories'.")
  return DatasetInfo(num_classes=len(cats), label_to_category_id=tuple(ids),
                     category_names=tuple(str(c["name"]) for c in cats),
                     gt_json=gt_json)


def load_coco_split(json_path: str, image_dir: str, skip_bad: bool = False,
                    info: DatasetInfo | None = None
                    ) -> tuple[ExampleTable, DatasetInfo]:
  """Reads one split: its example table and its DatasetInfo.

  `info`: the label mapping to use (e.g. the training split's, for the
  validation split); by default the mapping of this JSON. Boxes are checked:
  non-finite, negative width/height, entirely outside the image, unknown
  category or image id are errors (or skips with `skip_bad`). Boxes partly
  outside are clipped later, zero-size ones dropped later (`transforms.py`).
  """
  data = read_coco_json(json_path)
  own_info = dataset_info_from_json(data, json_path)
  info = info or own_info
  cat_to_label = info.category_id_to_label
  problems = Problems(skip_bad, json_path)

  images = {}
  for im in data["images"]:
    iid = int(im["id"])
    if iid in images:
      raise DataError(f"{json_path}: image id {iid} appears twice in 'images'."
                      " Give every image a unique id.")
    images[iid] = im
  bad_images: set[int] = set()
  per_image: dict[int, list] = {iid: [] for iid in images}
  for ann in data["annotations"]:
    aid, iid = ann["id"], ann["image_id"]
    if iid not in images:
      problems.add(f"annotation {aid} refers to image_id {iid}, which is not "
                   "in 'images'")
      continue
    im = images[iid]
    bbox = ann["bbox"]
    try:
      x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
      problems.add(f"annotation {aid} (image {iid}): bbox {bbox!r} is not 4 "
                   "numbers [x, y, width, height]")
      bad_images.add(iid)
      continue
    if ann["category_id"] not in cat_to_label:
      problems.add(f"annotation {aid} (image {iid}): unknown category_id "
                   f"{ann['category_id']} (not in 'categories')")
      bad_images.add(iid)
      continue
    W, H = float(im["width"]), float(im["height"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
      problems.add(f"annotation {aid} (image {iid}): bbox {bbox!r} has a "
                   "negative or non-finite size")
      bad_images.add(iid)
      continue
    if x >= W or y >= H or x + w <= 0 or y + h <= 0:
      problems.add(f"annotation {aid} (image {iid}): bbox {bbox!r} lies "
                   f"outside the {im['width']}x{im['height']} image")
      bad_images.add(iid)
      continue
    per_image[iid].append((x, y, x + w, y + h, cat_to_label[ann["category_id"]],
                           bool(ann.get("iscrowd", 0)), int(aid)))
  problems.report()

  ids = sorted(i for i in images if i not in bad_images)
  rows = [r for i in ids for r in per_image[i]]
  arr = np.asarray([r[:4] for r in rows], np.float32).reshape(-1, 4)
  table = ExampleTable(
      image_ids=np.asarray(ids, np.int64),
      paths=np.asarray([os.path.join(image_dir, str(images[i]["file_name"]))
                        for i in ids] or np.zeros(0, str)),
      heights=np.asarray([images[i]["height"] for i in ids], np.int64),
      widths=np.asarray([images[i]["width"] for i in ids], np.int64),
      box_splits=np.concatenate(
          [[0], np.cumsum([len(per_image[i]) for i in ids])]).astype(np.int64),
      boxes=arr,
      classes=np.asarray([r[4] for r in rows], np.int32),
      is_crowd=np.asarray([r[5] for r in rows], bool),
      ann_ids=np.asarray([r[6] for r in rows], np.int64))
  return table, DatasetInfo(info.num_classes, info.label_to_category_id,
                            info.category_names, json_path)
