"""TFDS `coco/2017`, exported once to COCO format and read as such.

TFDS stores COCO in sequential record files, which cannot be read at a
random index; the pipeline needs random access (cheap exact resume, per-
epoch index shuffles, canvas buckets known before decoding). So each split
is exported once: the encoded images are copied unchanged (no re-encoding)
and an instances JSON is written with the standard COCO category ids and
pixel boxes. That JSON is also the evaluation ground truth unless a real
`instances_val2017.json` is configured (data.tfds.val_gt_json): the image
ids are the COCO ids, so both agree.

The export goes through `fcos_jax.storage` (a local folder or a URL such as
gs://): the images first, then `instances.json`, the "done" marker, last, so
a reader never sees half an export; an interrupted export is redone over
the same files (nothing is deleted).

Labels: TFDS numbers the 80 COCO classes 0..79 in category-id order; COCO
ids use the 91-id scheme with gaps (`COCO_CATEGORY_IDS`).
"""

from __future__ import annotations

import posixpath

import numpy as np
from fcos_jax.data.tf_setup import tf

from fcos_jax import storage
from fcos_jax.errors import DataError

# COCO 2017 category id of each TFDS label 0..79, and the names.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
    23, 24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
    65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88,
    89, 90)
COCO_CATEGORY_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "stop sign",
    "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon",
    "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")
_LABEL_TO_ID = np.asarray(COCO_CATEGORY_IDS, np.int64)


def tfds_label_to_category_id(labels) -> np.ndarray:
  """TFDS coco labels 0..79 (any shape) -> COCO category ids."""
  return _LABEL_TO_ID[np.asarray(labels)]


def category_id_to_tfds_label(ids) -> np.ndarray:
  """COCO category ids (any shape) -> TFDS labels 0..79 (-1 if unknown)."""
  lut = np.full(max(COCO_CATEGORY_IDS) + 1, -1, np.int64)
  lut[_LABEL_TO_ID] = np.arange(80)
  return lut[np.asarray(ids)]


def _image_hw(encoded: bytes) -> tuple[int, int]:
  try:
    shape = tf.image.extract_jpeg_shape(encoded)  # Header only: cheap.
  except tf.errors.OpError:
    shape = tf.shape(tf.io.decode_image(encoded, channels=3,
                                        expand_animations=False))
  return int(shape[0]), int(shape[1])


def _safe_split_name(split: str) -> str:
  return "".join(c if c.isalnum() or c in "-_" else "_" for c in split)


def categories() -> list[dict]:
  """The 80 COCO categories [{"id", "name"}] of every exported split."""
  return [{"id": i, "name": n}
          for i, n in zip(COCO_CATEGORY_IDS, COCO_CATEGORY_NAMES)]


def export_paths(name: str, split: str, data_dir: str | None = None,
                 export_dir: str | None = None) -> tuple[str, str]:
  """(instances json, image dir) where a split is (or will be) exported."""
  root = export_dir or storage.join(data_dir or "~/tensorflow_datasets",
                                    "fcos_jax_export")
  out = storage.join(root, name.replace("/", "_"), _safe_split_name(split))
  return storage.join(out, "instances.json"), storage.join(out, "images")


def is_exported(name: str, split: str, data_dir: str | None = None,
                export_dir: str | None = None) -> bool:
  return storage.exists(export_paths(name, split, data_dir, export_dir)[0])


def export_tfds_split(name: str, split: str, data_dir: str | None = None,
                      export_dir: str | None = None) -> tuple[str, str]:
  """Exports a TFDS split to COCO format once; (instances json, image dir).

  Reuses a finished export (its instances.json exists); otherwise writes
  the images, then instances.json last.
  """
  import tensorflow_datasets as tfds
  files = export_paths(name, split, data_dir, export_dir)
  if storage.exists(files[0]):
    return files
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
  except Exception as e:  # TFDS raises many types for a missing dataset.
    raise DataError(
        f"TFDS dataset {name!r} split {split!r} (data_dir={data_dir!r}) cannot "
        f"be read: {e}. Prepare it first (tfds build {name} --data_dir=...) "
        "or set data.tfds.data_dir.") from e
  img_dir = files[1]
  storage.makedirs(img_dir)
  images, annotations, names = [], [], set()
  for ex in ds.as_numpy_iterator():
    image_id = int(ex["image/id"])
    encoded = ex["image"]
    h, w = _image_hw(encoded)
    fname = posixpath.basename(ex["image/filename"].decode()) or \
        f"{image_id:012d}.jpg"
    if fname in names:  # Two images of one name: keep both.
      fname = f"{image_id:012d}_{fname}"
    names.add(fname)
    storage.write_bytes_atomic(storage.join(img_dir, fname), encoded)
    images.append({"id": image_id, "file_name": fname, "width": w,
                   "height": h})
    obj = ex["objects"]
    # TFDS boxes: normalised (ymin, xmin, ymax, xmax) -> pixel xywh.
    b = np.asarray(obj["bbox"], np.float64).reshape(-1, 4)
    ids = tfds_label_to_category_id(np.asarray(obj["label"], np.int64))
    for k in range(len(b)):
      x0, y0 = b[k, 1] * w, b[k, 0] * h
      bw, bh = (b[k, 3] - b[k, 1]) * w, (b[k, 2] - b[k, 0]) * h
      ann_id = int(obj["id"][k]) if "id" in obj else len(annotations) + 1
      annotations.append({
          "id": ann_id, "image_id": image_id, "category_id": int(ids[k]),
          "bbox": [x0, y0, bw, bh],
          "area": float(obj["area"][k]) if "area" in obj else bw * bh,
          "iscrowd": int(bool(obj["is_crowd"][k])), "segmentation": []})
  storage.write_json_atomic(files[0], {"images": images,
                                       "annotations": annotations,
                                       "categories": categories()})
  return files
