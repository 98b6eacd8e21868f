"""Bad input: a clear error naming the file / annotation, or a counted skip."""

import json
import logging
import os

import numpy as np
import pytest

from fcos_jax.data.coco_format import load_coco_split
from fcos_jax.data.config import default_data_config
from fcos_jax.data.errors import DataError
from fcos_jax.data.pipeline import build_eval_dataset, build_train_dataset
from fcos_jax.data.testing import write_coco

BOX = (4, 4, 20, 12, 1, 0)


def _dataset(tmp_path, n=6, fmt="jpg"):
  return write_coco(str(tmp_path), [(32, 48, [BOX])] * n, fmt=fmt)


def _cfg(js, im, skip=False):
  c = default_data_config()
  c.source = "coco_format"
  c.coco.train_json = c.coco.val_json = js
  c.coco.train_images = c.coco.val_images = im
  c.min_size, c.max_size, c.canvases = 32, 64, ((32, 64),)
  c.max_boxes = 2
  c.num_parallel_calls = 1
  c.skip_bad_examples = skip
  return c


def _edit_json(js, fn):
  data = json.load(open(js))
  fn(data)
  json.dump(data, open(js, "w"))


def _break_image(im, how):
  path = os.path.join(im, "000003.jpg")
  data = open(path, "rb").read()
  if how == "missing":
    os.remove(path)
  elif how == "corrupt":
    open(path, "wb").write(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
  elif how == "truncated":
    open(path, "wb").write(data[:len(data) // 2])
  return path


@pytest.mark.parametrize("how", ["missing", "corrupt", "truncated"])
def test_bad_image_error_names_the_file(tmp_path, how):
  js, im = _dataset(tmp_path)
  path = _break_image(im, how)
  it = build_train_dataset(_cfg(js, im), 2, 0, 1, seed=0)
  with pytest.raises(DataError) as e:
    for _ in range(6):
      next(it)
  assert path in str(e.value) and "skip_bad_examples" in str(e.value)
  with pytest.raises(DataError, match="000003.jpg"):
    list(build_eval_dataset(_cfg(js, im), 2, 0, 1))


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_bad_image_skipped_and_counted(tmp_path, how):
  js, im = _dataset(tmp_path)
  _break_image(im, how)
  it = build_train_dataset(_cfg(js, im, skip=True), 2, 0, 1, seed=0)
  ids = np.concatenate([next(it)["image_id"] for _ in range(9)])  # 3 epochs.
  assert 3 not in ids and set(ids) == {1, 2, 4, 5, 6}
  assert it.num_skipped >= 3
  ev = build_eval_dataset(_cfg(js, im, skip=True), 4, 0, 1)
  batches = list(ev)
  assert len(batches) == ev.num_steps == 2
  valid = np.concatenate([b["image_id"][b["example_valid"]] for b in batches])
  assert sorted(valid) == [1, 2, 4, 5, 6]


def test_image_size_differing_from_json_is_an_error(tmp_path):
  js, im = _dataset(tmp_path)
  _edit_json(js, lambda d: d["images"][1].update(width=50))
  with pytest.raises(DataError, match="000002.jpg.*differs"):
    list(build_eval_dataset(_cfg(js, im), 2, 0, 1))


def test_bad_json(tmp_path):
  js, im = _dataset(tmp_path)
  open(js, "w").write('{"images": [')
  with pytest.raises(DataError, match="not valid JSON"):
    load_coco_split(js, im)
  with pytest.raises(DataError, match="does not exist"):
    load_coco_split(str(tmp_path / "nope.json"), im)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.pop("categories"), r"lacks required key\(s\) \['categories'\]"),
    (lambda d: d["images"][0].pop("height"), r"image 1 lacks .*'height'"),
    (lambda d: d["annotations"][2].pop("bbox"), r"annotation 3 lacks .*'bbox'"),
])
def test_missing_keys(tmp_path, edit, match):
  js, im = _dataset(tmp_path)
  _edit_json(js, edit)
  with pytest.raises(DataError, match=match):
    load_coco_split(js, im)


BAD_ANNOTATIONS = [
    ({"bbox": [60, 4, 5, 5]}, "annotation 2 .*outside"),
    ({"bbox": [4, 4, -3, 5]}, "annotation 2 .*negative"),
    ({"bbox": [4, 4, 5]}, "annotation 2 .*not 4 numbers"),
    ({"category_id": 99}, "annotation 2 .*unknown category_id 99"),
    ({"image_id": 1234}, "annotation 2 refers to image_id 1234"),
]


@pytest.mark.parametrize("change,match", BAD_ANNOTATIONS)
def test_bad_annotation_error(tmp_path, change, match):
  js, im = _dataset(tmp_path)
  _edit_json(js, lambda d: d["annotations"][1].update(change))
  with pytest.raises(DataError, match=match):
    load_coco_split(js, im)


@pytest.mark.parametrize("change,match", BAD_ANNOTATIONS)
def test_bad_annotation_skipped_and_logged(tmp_path, caplog, change, match):
  js, im = _dataset(tmp_path)
  _edit_json(js, lambda d: d["annotations"][1].update(change))
  with caplog.at_level(logging.WARNING, logger="fcos_jax.data"):
    table, _ = load_coco_split(js, im, skip_bad=True)
  assert "skipped 1 bad" in caplog.text
  if "image_id" in change:  # Only the stray annotation goes.
    assert len(table) == 6 and len(table.boxes) == 5
  else:  # The image with the bad box goes, never a wrong or missing box.
    assert 2 not in table.image_ids and len(table) == 5
    assert len(table.boxes) == 5


def test_partly_outside_box_is_clipped_not_an_error(tmp_path):
  js, im = _dataset(tmp_path, n=1)
  _edit_json(js, lambda d: d["annotations"][0].update(bbox=[40, 20, 20, 20]))
  b = next(iter(build_eval_dataset(_cfg(js, im), 1, 0, 1)))
  np.testing.assert_allclose(b["boxes"][0, 0], [40, 20, 48, 32])
