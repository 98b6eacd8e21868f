"""Bad input: a clear error naming the file / annotation, or a counted skip."""

import json
import logging
import os
import re
import warnings

import numpy as np
import pytest

from fcos_jax.data.coco_format import load_coco_split
from fcos_jax.data.config import default_data_config
from fcos_jax.errors import DataError
from fcos_jax.data.pipeline import build_eval_dataset, build_train_dataset
from coco_files import write_coco

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


def _break_image(im, how, name="000003.jpg"):
  path = os.path.join(im, name)
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


@pytest.mark.parametrize("how,name", [("missing", "000003.jpg"),
                                      ("truncated", "000003.jpg"),
                                      ("missing", "000006.jpg")])
def test_bad_image_skipped_and_counted_once(tmp_path, caplog, how, name):
  js, im = _dataset(tmp_path)
  path = _break_image(im, how, name)
  bad = int(name[:6])
  with caplog.at_level(logging.WARNING, logger="fcos_jax.data"):
    it = build_train_dataset(_cfg(js, im, skip=True), 2, 0, 1, seed=0)
    ids = np.concatenate([next(it)["image_id"] for _ in range(9)])  # 3 epochs.
  assert bad not in ids and set(ids) == set(range(1, 7)) - {bad}
  # One bad image met in 3 epochs is 1 skipped image, not 3.
  assert it.num_skipped == 1 and it.skipped_paths == [path]
  assert "skipped 1 distinct unreadable image(s)" in caplog.text
  assert "skipped 2" not in caplog.text and "skipped 3" not in caplog.text
  ev = build_eval_dataset(_cfg(js, im, skip=True), 4, 0, 1)
  batches = list(ev)
  assert len(batches) == ev.num_steps == 2
  valid = np.concatenate([b["image_id"][b["example_valid"]] for b in batches])
  assert sorted(valid) == sorted(set(range(1, 7)) - {bad})
  # Also when it is the last image of the split (followed by padding).
  assert ev.num_skipped == 1 and ev.skipped_paths == [path]


def test_bad_image_read_through_storage(tmp_path, monkeypatch, caplog):
  """The storage reader (paths TF doesn't reach) names the file too, and
  skips and counts it the same way."""
  from fcos_jax import storage
  monkeypatch.setattr(storage, "tf_reaches", lambda p: False)
  js, im = _dataset(tmp_path)
  path = _break_image(im, "missing")
  with pytest.raises(DataError, match=r"000003.jpg.*cannot be used"):
    list(build_eval_dataset(_cfg(js, im), 2, 0, 1))
  it = build_train_dataset(_cfg(js, im, skip=True), 2, 0, 1, seed=0)
  ids = np.concatenate([next(it)["image_id"] for _ in range(6)])
  assert set(ids) == {1, 2, 4, 5, 6} and it.skipped_paths == [path]
  js, im = _dataset(tmp_path / "b")
  _break_image(im, "corrupt", "000004.jpg")
  with pytest.raises(DataError, match=r"000004.jpg.*cannot be used"):
    list(build_eval_dataset(_cfg(js, im), 2, 0, 1))


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


# (change to annotation 2 of image 2, error it gives, images dropped by a
# skipping run: the image of the bad box; none for a stray annotation).
BAD_ANNOTATIONS = [
    ({"bbox": [60, 4, 5, 5]}, "annotation 2 .*outside", [2]),
    ({"bbox": [4, 4, -3, 5]}, "annotation 2 .*negative", [2]),
    ({"bbox": [4, 4, 5]}, r"annotation 2 .*has 3 values, not 4 numbers", [2]),
    # Read character by character this would be [1, 2, 3, 4].
    ({"bbox": "1234"}, r"annotation 2 .*bbox '1234' is a string", [2]),
    ({"bbox": ["10", "10", "20", "20"]}, r"annotation 2 .*holds a str", [2]),
    ({"bbox": [4, 4, True, 5]}, r"annotation 2 .*holds a bool", [2]),
    ({"bbox": True}, r"annotation 2 .*bbox True is a bool", [2]),
    ({"bbox": {"x": 1}}, r"annotation 2 .*is a dict", [2]),
    ({"bbox": [4, 4, float("nan"), 5]}, r"annotation 2 .*not finite", [2]),
    ({"bbox": [4, 4, float("inf"), 5]}, r"annotation 2 .*not finite", [2]),
    ({"category_id": 99}, "annotation 2 .*unknown category_id 99", [2]),
    ({"category_id": "1"}, r"annotation 2 .*category_id '1' is a string; "
     "COCO needs integer ids", [2]),
    ({"category_id": 1.0}, r"annotation 2 .*category_id 1.0 is a float", [2]),
    ({"iscrowd": "0"}, r"annotation 2 .*iscrowd '0' must be 0 or 1", [2]),
    ({"iscrowd": 2}, r"annotation 2 .*iscrowd 2 must be 0 or 1", [2]),
    ({"id": "2"}, r"annotation '2' .*its id '2' is a string", [2]),
    ({"image_id": 1234}, "annotation 2 refers to image_id 1234", []),
    ({"image_id": "2"}, r"annotation 2: image_id '2' is a string; COCO needs "
     r"integer ids \(write 2, not \"2\"\)", [2]),
    ({"image_id": "x"}, r"annotation 2: image_id 'x' is a string", []),
    ({"image_id": None}, r"annotation 2: image_id None is a NoneType", []),
    # Duplicate ids: both images go (pycocotools would mix their boxes).
    ({"id": 5}, r"annotation id 5 appears 2 times in 'annotations' "
     r"\(image\(s\) \[2, 5\]\)", [2, 5]),
]

# (change to image record 2, error, images dropped).
BAD_IMAGE_RECORDS = [
    ({"width": 0}, r"image 2 \('000002.jpg'\): width 0 is not a positive", [2]),
    ({"height": -5}, r"image 2 .*height -5 is not a positive", [2]),
    ({"width": "48"}, r"image 2 .*width '48' is not a positive", [2]),
    ({"width": 47.5}, r"image 2 .*width 47.5 is not a positive", [2]),
    ({"width": None}, r"image 2 .*width None is not a positive", [2]),
    ({"height": True}, r"image 2 .*height True is not a positive", [2]),
    ({"id": "2"}, r"image '2' .*its id '2' is a string; COCO needs integer "
     r"ids .*in every annotation's image_id", [2]),
    ({"id": 2.0}, r"image 2.0 .*its id 2.0 is a float, not an integer", [2]),
    ({"file_name": ""}, r"image 2 .*file_name must be a non-empty string", [2]),
    ({"file_name": 7}, r"image 2 .*file_name must be a non-empty string", [2]),
    # Duplicate ids: both records go, and the boxes of that id with them
    # (here the annotation of image 2 then refers to no image: a stray one).
    ({"id": 1}, r"image id 1 appears 2 times in 'images'", [1, 2]),
]


def _check_error_and_skip(tmp_path, caplog, edit, match, dropped):
  js, im = _dataset(tmp_path)
  _edit_json(js, edit)
  with pytest.raises(DataError, match=match) as e:
    load_coco_split(js, im)
  assert js in str(e.value) and "skip_bad_examples" in str(e.value)
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="fcos_jax.data"):
    table, _ = load_coco_split(js, im, skip_bad=True)
  assert re.search(match, caplog.text)
  assert f"skipped {len(dropped)} bad image(s)" in caplog.text
  stray = not dropped or len(dropped) == 2 and "image id" in match
  assert f"{int(stray)} stray annotation(s)" in caplog.text
  # The images of bad records go whole: never a wrong or missing box.
  assert sorted(set(range(1, 7)) - set(table.image_ids.tolist())) == dropped
  assert len(table) == 6 - len(dropped)
  # A stray annotation goes alone (here it was image 2's box).
  assert len(table.boxes) == len(table) - (not dropped)
  assert set(table.ann_ids.tolist()) <= set(table.image_ids.tolist())


@pytest.mark.parametrize("change,match,dropped", BAD_ANNOTATIONS)
def test_bad_annotation_error_and_skip(tmp_path, caplog, change, match,
                                       dropped):
  _check_error_and_skip(tmp_path, caplog,
                        lambda d: d["annotations"][1].update(change), match,
                        dropped)


@pytest.mark.parametrize("change,match,dropped", BAD_IMAGE_RECORDS)
def test_bad_image_record_error_and_skip(tmp_path, caplog, change, match,
                                         dropped):
  _check_error_and_skip(tmp_path, caplog,
                        lambda d: d["images"][1].update(change), match, dropped)


def test_string_ids_in_both_places_say_so(tmp_path, caplog):
  """"1" in 'images' and in the annotations agree with each other, but
  pycocotools and our labels need integers: the message says that, not
  that an annotation's image is missing."""
  def stringify(d):
    for x in d["images"]:
      x["id"] = str(x["id"])
    for a in d["annotations"]:
      a["image_id"] = str(a["image_id"])
  js, im = _dataset(tmp_path)
  _edit_json(js, stringify)
  with pytest.raises(DataError) as e:
    load_coco_split(js, im)
  msg = str(e.value)
  assert "image '1'" in msg and "is a string; COCO needs integer ids" in msg
  assert "not in 'images'" not in msg
  with caplog.at_level(logging.WARNING, logger="fcos_jax.data"):
    table, _ = load_coco_split(js, im, skip_bad=True)
  assert len(table) == 0
  assert "skipped 6 bad image(s) and 0 stray" in caplog.text


def test_several_bad_boxes_of_one_image_count_it_once(tmp_path, caplog):
  js, im = _dataset(tmp_path)
  def edit(d):
    extra = dict(d["annotations"][1], id=100, bbox="1234")
    d["annotations"][1]["bbox"] = [60, 4, 5, 5]
    d["annotations"].append(extra)
  _edit_json(js, edit)
  with caplog.at_level(logging.WARNING, logger="fcos_jax.data"):
    table, _ = load_coco_split(js, im, skip_bad=True)
  assert 2 not in table.image_ids and len(table) == 5
  assert "skipped 1 bad image(s) and 0 stray annotation(s) (2 problem(s)" in (
      caplog.text)


@pytest.mark.parametrize("cat_id,match", [
    ("1", r"category 'a': category id '1' is a string; COCO needs integer"),
    (1.5, r"category 'a': category id 1.5 is a float, not an integer"),
    (2, r"category id\(s\) \[2\] appear more than once"),
])
def test_bad_category_ids_are_errors_even_when_skipping(tmp_path, cat_id,
                                                        match):
  js, im = _dataset(tmp_path)
  _edit_json(js, lambda d: d["categories"][0].update(id=cat_id))
  for skip in (False, True):
    with pytest.raises(DataError, match=match):
      load_coco_split(js, im, skip_bad=skip)


def test_zero_width_image_is_dropped_before_any_division(tmp_path, caplog):
  js, im = _dataset(tmp_path)
  _edit_json(js, lambda d: d["images"][1].update(width=0))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # No divide-by-zero RuntimeWarning.
    with pytest.raises(DataError, match=r"000002.jpg.*width 0"):
      build_eval_dataset(_cfg(js, im), 2, 0, 1)
    ev = build_eval_dataset(_cfg(js, im, skip=True), 2, 0, 1)
    ids = [i for b in ev for i in b["image_id"][b["example_valid"]]]
  assert sorted(ids) == [1, 3, 4, 5, 6]


def _perfect_ap(js, im):
  """COCO AP of the ground truth itself as detections, read by our loader
  (image ids, boxes, labels mapped back through DatasetInfo)."""
  from fcos_jax.evaluation.coco_eval import coco_evaluate
  data = json.load(open(js))
  results = [{"image_id": a["image_id"], "category_id": a["category_id"],
              "bbox": a["bbox"], "score": 1.0} for a in data["annotations"]]
  return coco_evaluate(js, results, [i["id"] for i in data["images"]])["AP"]


def test_duplicate_annotation_ids_are_refused(tmp_path):
  """Why: pycocotools indexes annotations by id, so with duplicates a
  perfect detector scores below AP 1 (0.776 on the issue's example)."""
  images = [(48, 64, [(4 + 3 * i, 4, 20, 12, 1, 0), (30, 20, 16, 20, 2, 0)])
            for i in range(6)]
  js, im = write_coco(str(tmp_path), images)
  assert _perfect_ap(js, im) == pytest.approx(1.0)
  # Number the annotations per image (1, 2 in each), a common export bug.
  _edit_json(js, lambda d: [a.update(id=k % 2 + 1)
                            for k, a in enumerate(d["annotations"])])
  assert _perfect_ap(js, im) < 0.9  # What the check prevents.
  with pytest.raises(DataError, match=r"annotation id 1 appears 6 times .*"
                     r"unique id"):
    load_coco_split(js, im)


def test_partly_outside_box_is_clipped_not_an_error(tmp_path):
  js, im = _dataset(tmp_path, n=1)
  _edit_json(js, lambda d: d["annotations"][0].update(bbox=[40, 20, 20, 20]))
  b = next(iter(build_eval_dataset(_cfg(js, im), 1, 0, 1)))
  np.testing.assert_allclose(b["boxes"][0, 0], [40, 20, 48, 32])
