"""Hostile inputs to the data layer: paths leaving the image folder,
images no canvas can hold, empty splits, and the synthetic generator
keeping files it did not write."""

import json
import logging
import os

import numpy as np
import pytest

from fcos_jax.data import sources, synthetic
from fcos_jax.data.config import default_data_config
from fcos_jax.data.coco_format import outside_path_problem
from fcos_jax.errors import DataError
from coco_files import write_coco

BOX = (4, 4, 20, 12, 1, 0)


def _cfg(js, im, skip=False):
  c = default_data_config()
  c.source = "coco_format"
  c.coco.train_json = c.coco.val_json = js
  c.coco.train_images = c.coco.val_images = im
  c.min_size, c.max_size, c.canvases = 32, 64, ((32, 64), (64, 32))
  c.skip_bad_examples = skip
  return c


def _edit(js, fn):
  data = json.load(open(js))
  fn(data)
  json.dump(data, open(js, "w"))


@pytest.mark.parametrize("name,why", [
    ("../val/x.jpg", "'..'"), ("/abs/path.jpg", "absolute"),
    ("a/../../x.jpg", "'..'"), ("gs://b/x.jpg", "URL"),
    ("..\\x.jpg", "'..'"), ("C:\\x.jpg", "absolute")])
def test_outside_path_refused_in_every_split(tmp_path, name, why):
  js, im = write_coco(str(tmp_path), [(32, 48, [BOX])] * 3)

  def point_out(d):
    d["images"][1]["file_name"] = name
  _edit(js, point_out)
  for split in ("train", "val"):
    with pytest.raises(DataError) as e:
      sources.load_split(_cfg(js, im), split)
    msg = str(e.value)
    assert js in msg and "image 2" in msg and repr(name) in msg
    assert why in msg and "data.allow_outside_paths=True" in msg
    assert "\n" not in msg


def test_outside_path_allowed_by_the_switch_or_skipped(tmp_path, caplog):
  js, im = write_coco(str(tmp_path), [(32, 48, [BOX])] * 3)
  other = os.path.join(str(tmp_path), "elsewhere")
  os.makedirs(other)
  os.replace(os.path.join(im, "000002.png"), os.path.join(other, "x.png"))
  _edit(js, lambda d: d["images"][1].update(file_name="../elsewhere/x.png"))
  cfg = _cfg(js, im)
  cfg.allow_outside_paths = True
  table, _ = sources.load_split(cfg, "train")
  assert list(table.image_ids) == [1, 2, 3]
  assert os.path.exists(table.paths[1])
  with caplog.at_level(logging.WARNING, logger="fcos_jax.data"):
    table, _ = sources.load_split(_cfg(js, im, skip=True), "train")
  assert list(table.image_ids) == [1, 3]
  assert "skipped 1 bad image" in caplog.text


def test_inside_paths_pass():
  for ok in ("x.jpg", "sub/x.jpg", "./x.jpg", "sub/../x.jpg", "..x.jpg"):
    assert outside_path_problem(ok) is None, ok


@pytest.mark.parametrize("h,w", [(3, 5000), (5000, 3), (1, 900)])
def test_extreme_aspect_image_refused_by_name_or_skipped(tmp_path, h, w,
                                                         caplog):
  js, im = write_coco(str(tmp_path), [(32, 48, [BOX]), (h, w, []),
                                      (32, 48, [BOX])])
  with pytest.raises(DataError) as e:
    sources.load_split(_cfg(js, im), "train")
  msg = str(e.value)
  assert "000002.png" in msg and f"{h}x{w} image" in msg
  assert "aspect ratio" in msg and "\n" not in msg
  with caplog.at_level(logging.WARNING, logger="fcos_jax.data"):
    table, _ = sources.load_split(_cfg(js, im, skip=True), "val")
  assert list(table.image_ids) == [1, 3]


def test_small_canvases_say_add_a_canvas_not_crop(tmp_path):
  js, im = write_coco(str(tmp_path), [(32, 48, [BOX])])
  cfg = _cfg(js, im)
  cfg.min_size, cfg.max_size = 64, 128
  with pytest.raises(DataError, match="Add a canvas"):
    sources.load_split(cfg, "train")


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_without_images_is_one_line(tmp_path, split):
  js, im = write_coco(str(tmp_path), [])
  with pytest.raises(DataError, match=f"The {split} split .* has no images"):
    sources.load_split(_cfg(js, im), split)


def test_split_without_boxes_is_one_line(tmp_path):
  js, im = write_coco(str(tmp_path), [(32, 48, []), (32, 48, [])])
  with pytest.raises(DataError, match="COCO AP is undefined"):
    sources.load_split(_cfg(js, im), "val")
  js2, im2 = write_coco(str(tmp_path / "crowd"),
                        [(32, 48, [(4, 4, 20, 12, 1, 1)])])
  with pytest.raises(DataError, match="no \\(non-crowd\\) box"):
    sources.load_split(_cfg(js2, im2), "train")


def test_skipping_every_image_says_so(tmp_path):
  js, im = write_coco(str(tmp_path), [(3, 5000, [])])
  with pytest.raises(DataError, match="no images after skipping bad ones"):
    sources.load_split(_cfg(js, im, skip=True), "val")


def test_synthetic_regeneration_keeps_a_users_file(tmp_path):
  d = str(tmp_path / "syn")
  synthetic.ensure_synthetic_dataset(d, num_train=3, num_val=2,
                                     image_size=64, seed=0)
  extra = os.path.join(d, "train", "my_extra_photo.jpg")
  open(extra, "wb").write(b"mine")
  files = synthetic.ensure_synthetic_dataset(d, num_train=2, num_val=1,
                                             image_size=64, seed=1)
  assert open(extra, "rb").read() == b"mine"
  ours = sorted(f for f in os.listdir(files["train_images"])
                if f != "my_extra_photo.jpg")
  assert ours == ["00000001.jpg", "00000002.jpg"]  # The 3rd one was ours.
  assert len(os.listdir(files["val_images"])) == 1
  table = json.load(open(files["train_json"]))
  assert len(table["images"]) == 2
