"""COCO evaluation wrapper: hand-made cases with known AP."""

import json

import numpy as np
import pytest

from fcos_jax.evaluation import coco_eval
from fcos_jax.inference import coco_results


def _gt(tmp_path, gt=None):
  """Writes `gt` (default: two images, two categories) as gt.json."""
  gt = gt or {
      "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.jpg"},
                 {"id": 2, "width": 100, "height": 80, "file_name": "b.jpg"}],
      "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
      "annotations": [
          {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20],
           "area": 600, "iscrowd": 0},
          {"id": 2, "image_id": 2, "category_id": 7, "bbox": [50, 30, 40, 40],
           "area": 1600, "iscrowd": 0}],
  }
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(gt))
  return str(path)


def _dets(boxes, classes):
  return {"image_id": np.array([1, 2]),
          "boxes": np.array(boxes, np.float32).reshape(2, 1, 4),
          "scores": np.full((2, 1), 0.9, np.float32),
          "classes": np.array(classes, np.int32).reshape(2, 1),
          "valid": np.ones((2, 1), bool)}


def test_perfect_detections_give_ap_one(tmp_path):
  dets = _dets([[10, 10, 40, 30], [50, 30, 90, 70]], [0, 1])
  res = coco_results.detections_to_coco(dets, [3, 7])
  assert res[0]["bbox"] == [10.0, 10.0, 30.0, 20.0] and res[1]["category_id"] == 7
  m = coco_eval.coco_evaluate(_gt(tmp_path), res, [1, 2])
  assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)


def test_images_without_detections_still_count(tmp_path):
  dets = _dets([[10, 10, 40, 30], [50, 30, 90, 70]], [0, 1])
  dets["valid"][1] = False  # The second image gets no detection.
  m = coco_eval.coco_evaluate(
      _gt(tmp_path), coco_results.detections_to_coco(dets, [3, 7]), [1, 2])
  # Two categories, one found perfectly, the other missed: mean AP 0.5.
  assert m["AP"] == pytest.approx(0.5)


def test_wrong_class_and_no_results(tmp_path):
  dets = _dets([[10, 10, 40, 30], [50, 30, 90, 70]], [1, 0])
  m = coco_eval.coco_evaluate(
      _gt(tmp_path), coco_results.detections_to_coco(dets, [3, 7]), [1, 2])
  assert m["AP"] == pytest.approx(0.0)
  assert coco_eval.coco_evaluate(_gt(tmp_path), [], [1, 2])["AP"] == 0.0
  assert "maxDets=100" in coco_eval.format_table(m)


def test_unknown_image_id_is_refused(tmp_path):
  with pytest.raises(ValueError, match="not in"):
    coco_eval.coco_evaluate(_gt(tmp_path), [], [1, 99])


def test_pr_curves_are_cocoeval_precision_and_average_to_ap(tmp_path):
  from fcos_jax.evaluation import pictures
  # One box found exactly, the other shifted to IoU ~0.6: AP50 1, AP75 0.5.
  dets = _dets([[10, 10, 40, 30], [55, 35, 95, 75]], [0, 1])
  m, ev = coco_eval.coco_evaluate(
      _gt(tmp_path), coco_results.detections_to_coco(dets, [3, 7]), [1, 2],
      return_eval=True)
  curves = pictures.pr_curves(ev)
  p = ev.eval["precision"]
  np.testing.assert_array_equal(curves[0.5], p[0, :, :, 0, 2].mean(axis=1))
  np.testing.assert_array_equal(curves[0.75], p[5, :, :, 0, 2].mean(axis=1))
  assert np.mean(curves[0.5]) == pytest.approx(m["AP50"])
  assert np.mean(curves[0.75]) == pytest.approx(m["AP75"])
  assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.5)
  picture = pictures.plot_pr_curves(curves)
  assert picture.shape == (400, 480, 3) and picture.dtype == np.uint8
  assert (picture != 255).any(axis=-1).mean() > 0.01  # Lines were drawn.


def test_pr_curves_reach_tensorboards_pr_dashboard(tmp_path):
  """Hand-computed rows; written by clu's SummaryWriter and read back as the
  PR-curves plugin's tensor."""
  import tensorflow as tf
  from clu import metric_writers
  from fcos_jax.evaluation import pictures
  values, meta = pictures.pr_curve_summaries({0.5: np.array([1.0, 0.5])}, 2)
  rows = values["eval/pr_curve_iou50"]
  np.testing.assert_allclose(rows, [[0, 2], [0, 2], [0, 0], [2, 0],
                                    [1, 0.5], [0, 1]])
  writer = metric_writers.SummaryWriter(str(tmp_path))
  writer.write_summaries(7, values, meta)
  writer.close()
  (events,) = list(tmp_path.glob("events.out.tfevents.*"))
  found = [(e.step, v) for e in tf.compat.v1.train.summary_iterator(str(events))
           for v in e.summary.value]
  assert len(found) == 1
  step, value = found[0]
  assert step == 7 and value.tag == "eval/pr_curve_iou50"
  assert value.metadata.plugin_data.plugin_name == "pr_curves"
  np.testing.assert_allclose(tf.make_ndarray(value.tensor), rows)
