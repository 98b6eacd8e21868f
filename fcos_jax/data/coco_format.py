"""Any COCO-format detection dataset: an instances JSON + an image folder.

The JSON is read and checked up front in Python (cheap, and bad annotations
get errors that name the annotation id); the images are read and decoded
later in the tf.data graph (`example_graph.py`).

Every field the pipeline or pycocotools relies on is checked here, with
the JSON types COCO needs (integer ids, 4-number boxes, positive sizes): a
value pycocotools would read differently from us (a string id, a duplicate
annotation id) would score the model wrongly without any error.

Labels: COCO category ids may be any integers (COCO itself uses 1..90 with
gaps); they map to contiguous labels 0..C-1 in increasing id order, and back
through `DatasetInfo.label_to_category_id`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import posixpath

import numpy as np

from fcos_jax import storage
from fcos_jax.data.problems import Problems
from fcos_jax.errors import DataError


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


def _is_int(v) -> bool:
  """A JSON integer (bool is not one, though Python says so)."""
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_problem(value, what: str) -> str | None:
  """Why `value` is not a usable COCO id (None if it is one)."""
  if _is_int(value):
    return None
  if isinstance(value, str):
    return (f"{what} {value!r} is a string; COCO needs integer ids (write "
            f"{value}, not \"{value}\")")
  return f"{what} {value!r} is a {type(value).__name__}, not an integer"


def _meant_id(value) -> int | None:
  """The integer a user meant by a mistyped id ("7", 7.0), if any."""
  if _is_int(value):
    return value
  if isinstance(value, str) and value.strip().isdigit():
    return int(value)
  if isinstance(value, float) and math.isfinite(value) and value == int(value):
    return int(value)
  return None


def read_coco_json(path: str) -> tuple[dict, "DatasetInfo"]:
  """Loads and shape-checks a COCO instances JSON: (its data, its
  DatasetInfo); DataError on bad input.

  Checks the structure (keys, lists) and the categories (integer, unique
  ids); the image and annotation records are checked by `load_coco_split`.
  """
  if not storage.exists(path):
    raise DataError(f"Annotations file {path!r} does not exist. Set the "
                    "data config path (e.g. data.coco.train_json) to it.")
  try:
    data = json.loads(storage.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
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
  for cat in data["categories"]:
    problem = _int_problem(cat["id"], "category id")
    if problem:
      raise DataError(f"{path}: category {cat['name']!r}: {problem}. Give "
                      "every category an integer id (and use the same "
                      "integers as the annotations' category_id).")
  info = dataset_info_from_json(data, path)
  _remember_info(path, info)
  return data, info


def dataset_info_from_json(data: dict, gt_json: str) -> DatasetInfo:
  """Contiguous labels in increasing category-id order."""
  cats = sorted(data["categories"], key=lambda c: c["id"])
  ids = [int(c["id"]) for c in cats]
  dups = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
  if dups:
    raise DataError(f"{gt_json}: category id(s) {dups} appear more than once "
                    "in 'categories'. Give every category a unique id.")
  return DatasetInfo(num_classes=len(cats), label_to_category_id=tuple(ids),
                     category_names=tuple(str(c["name"]) for c in cats),
                     gt_json=gt_json)


# DatasetInfo of each JSON read, keyed by (path, mtime, size): the category
# check of the validation split needs the training split's categories, and
# a COCO training JSON is too big to parse again for that at every
# evaluation.
_INFO_CACHE: dict[tuple, DatasetInfo] = {}


def _file_key(path: str):
  try:
    st = storage.path(path).stat()
  except OSError:
    return None
  return (str(path), getattr(st, "mtime", None), getattr(st, "length", None))


def _remember_info(path: str, info: DatasetInfo) -> None:
  key = _file_key(path)
  if key is not None:
    _INFO_CACHE[key] = info


def dataset_info_of_file(path: str) -> DatasetInfo:
  """The DatasetInfo (categories) of a COCO JSON; parsed at most once while
  the file is unchanged."""
  key = _file_key(path)
  if key in _INFO_CACHE:
    return _INFO_CACHE[key]
  return read_coco_json(path)[1]


def _image_problem(im) -> str | None:
  """What is wrong with an 'images' record's id, file_name, width, height."""
  where = f"image {im['id']!r} ({im['file_name']!r})"
  problem = _int_problem(im["id"], "its id")
  if problem:
    if isinstance(im["id"], str):
      problem += (" in 'images' and in every annotation's image_id; COCO "
                  "evaluation (pycocotools) matches ids by value")
    return f"{where}: {problem}"
  if not isinstance(im["file_name"], str) or not im["file_name"]:
    return f"{where}: file_name must be a non-empty string (the image's path " \
           "relative to the image folder)"
  for key in ("width", "height"):
    v = im[key]
    if not (_is_number(v) and math.isfinite(v) and v > 0 and v == int(v)):
      return (f"{where}: {key} {v!r} is not a positive whole number of pixels"
              " (write the decoded image's size)")
  return None


def outside_path_problem(file_name: str) -> str | None:
  """Why `file_name` would name a file outside its image folder (None if
  it stays inside): an absolute path, a URL, or a path that climbs out
  with "..". Backslashes count as separators (Windows-made JSONs)."""
  name = file_name.replace("\\", "/")
  if "://" in name:
    return "is a URL"
  if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
    return "is an absolute path"
  if posixpath.normpath(name).split("/")[0] == "..":
    return "climbs out of the image folder with '..'"
  return None


def _bbox_problem(bbox) -> str | None:
  """Why `bbox` is not 4 finite JSON numbers [x, y, width, height]."""
  want = "4 numbers [x, y, width, height]"
  if isinstance(bbox, str):
    return f"bbox {bbox!r} is a string, not a list of {want}"
  if not isinstance(bbox, (list, tuple)):
    return f"bbox {bbox!r} is a {type(bbox).__name__}, not a list of {want}"
  if len(bbox) != 4:
    return f"bbox {bbox!r} has {len(bbox)} values, not {want}"
  for v in bbox:
    if not _is_number(v):
      return (f"bbox {bbox!r} holds a {type(v).__name__} ({v!r}), not only "
              f"numbers: it must be {want}")
  if not all(math.isfinite(v) for v in bbox):
    return f"bbox {bbox!r} is not finite"
  return None


def load_coco_split(json_path: str, image_dir: str, skip_bad: bool = False,
                    info: DatasetInfo | None = None,
                    allow_outside_paths: bool = False
                    ) -> tuple[ExampleTable, DatasetInfo]:
  """Reads one split: its example table and its DatasetInfo.

  `info`: the label mapping to use (e.g. the training split's, for the
  validation split); by default the mapping of this JSON.

  Checked, each an error (or with `skip_bad` a skip: the image is dropped,
  counted once): image records (integer unique id, file_name, positive
  whole width/height); annotations (integer id, unique over the file;
  integer image_id of a listed image; bbox exactly 4 finite numbers with
  non-negative size, not entirely outside the image; integer category_id
  of a listed category; iscrowd 0 or 1). Boxes partly outside are clipped
  later, zero-size ones dropped later (`transforms.py`). A file_name that
  leaves `image_dir` (absolute, a URL, or "../") is a problem too unless
  `allow_outside_paths` (data.allow_outside_paths).
  """
  data, own_info = read_coco_json(json_path)
  info = info or own_info
  cat_to_label = info.category_id_to_label
  problems = Problems(skip_bad, json_path)

  # --- Images: their records, then unique ids. ---
  images: dict[int, dict] = {}
  bad_images: set[int] = set()
  id_counts = collections.Counter(
      im["id"] for im in data["images"] if _is_int(im["id"]))
  for k, im in enumerate(data["images"]):
    problem = _image_problem(im)
    if problem:
      problems.add(problem, images=[("index", k)])
      if _meant_id(im["id"]) is not None:  # Its annotations go with it.
        bad_images.add(_meant_id(im["id"]))
      continue
    iid = im["id"]
    outside = None if allow_outside_paths else outside_path_problem(
        im["file_name"])
    if outside:
      problems.add(
          f"image {iid}: file_name {im['file_name']!r} {outside}, so it "
          f"names a file outside the image folder {image_dir!r}. Write it "
          "relative to that folder, or set data.allow_outside_paths=True "
          "if reading files outside it is intended", images=[("index", k)])
      bad_images.add(iid)
      continue
    if id_counts[iid] > 1:
      problems.add(f"image id {iid} appears {id_counts[iid]} times in 'images'"
                   f" (this one: {im['file_name']!r}); give every image a "
                   "unique id", images=[("index", k)])
      bad_images.add(iid)
      continue
    images[iid] = im

  # --- Annotations. ---
  ann_counts = collections.Counter(
      a["id"] for a in data["annotations"] if _is_int(a["id"]))
  dup_images: dict[int, set] = collections.defaultdict(set)
  for ann in data["annotations"]:
    if _is_int(ann["id"]) and ann_counts[ann["id"]] > 1:
      dup_images[ann["id"]].add(
          ann["image_id"] if _is_int(ann["image_id"]) else None)
  for aid, iids in sorted(dup_images.items()):
    listed = sorted(i for i in iids if i is not None)
    kept = [i for i in listed if i in images]
    problems.add(
        f"annotation id {aid} appears {ann_counts[aid]} times in "
        f"'annotations' (image(s) {listed}); give every annotation a unique "
        "id: pycocotools keeps one annotation per id, so COCO evaluation "
        "would match detections against the wrong boxes (a perfect detector "
        "scores below AP 1)", images=[("id", i) for i in kept])
    bad_images.update(listed)

  per_image: dict[int, list] = {iid: [] for iid in images}
  for ann in data["annotations"]:
    aid, iid = ann["id"], ann["image_id"]
    if _is_int(aid) and ann_counts[aid] > 1:
      continue  # Reported above, with its images.
    if not _is_int(iid):
      # A string "7" means image 7 to the user, so that image loses a box.
      target = _meant_id(iid)
      if target in bad_images:
        continue  # Its image is already dropped and reported.
      owner = [("id", target)] if target in images else []
      if owner:
        bad_images.add(target)
      problems.add(f"annotation {aid!r}: " + _int_problem(iid, "image_id"),
                   images=owner)
      continue
    if iid not in images:
      if iid in bad_images:
        continue  # Its image is already dropped and reported.
      problems.add(f"annotation {aid!r} refers to image_id {iid}, which is "
                   "not in 'images'")
      continue
    im = images[iid]
    where = f"annotation {aid!r} (image {iid})"
    problem = _int_problem(aid, "its id")
    if not problem:
      problem = _bbox_problem(ann["bbox"])
    if not problem:
      problem = _int_problem(ann["category_id"], "category_id")
      if problem:
        problem += "; category ids must be integers as in 'categories'"
    if not problem and ann["category_id"] not in cat_to_label:
      problem = (f"unknown category_id {ann['category_id']} (not in "
                 "'categories')")
    crowd = ann.get("iscrowd", 0)
    if not problem and (not isinstance(crowd, (int, float)) or
                        crowd not in (0, 1)):
      problem = (f"iscrowd {crowd!r} must be 0 or 1 (pycocotools takes any "
                 "other true value, \"0\" too, as crowd)")
    if not problem:
      x, y, w, h = (float(v) for v in ann["bbox"])
      W, H = float(im["width"]), float(im["height"])
      if w < 0 or h < 0:
        problem = f"bbox {ann['bbox']!r} has a negative size"
      elif x >= W or y >= H or x + w <= 0 or y + h <= 0:
        problem = (f"bbox {ann['bbox']!r} lies outside the "
                   f"{im['width']}x{im['height']} image")
    if problem:
      problems.add(f"{where}: {problem}", images=[("id", iid)])
      bad_images.add(iid)
      continue
    per_image[iid].append((x, y, x + w, y + h, cat_to_label[ann["category_id"]],
                           bool(crowd), int(aid)))
  problems.report()

  ids = sorted(i for i in images if i not in bad_images)
  rows = [r for i in ids for r in per_image[i]]
  arr = np.asarray([r[:4] for r in rows], np.float32).reshape(-1, 4)
  table = ExampleTable(
      image_ids=np.asarray(ids, np.int64),
      paths=np.asarray([storage.join(image_dir, images[i]["file_name"])
                        for i in ids] or np.zeros(0, str)),
      heights=np.asarray([int(images[i]["height"]) for i in ids], np.int64),
      widths=np.asarray([int(images[i]["width"]) for i in ids], np.int64),
      box_splits=np.concatenate(
          [[0], np.cumsum([len(per_image[i]) for i in ids])]).astype(np.int64),
      boxes=arr,
      classes=np.asarray([r[4] for r in rows], np.int32),
      is_crowd=np.asarray([r[5] for r in rows], bool),
      ann_ids=np.asarray([r[6] for r in rows], np.int64))
  return table, DatasetInfo(info.num_classes, info.label_to_category_id,
                            info.category_names, json_path)
