"""Class-agnostic PR curves and proposal recall are pycocotools' own numbers:
the curve points equal COCOeval's precision array (useCats=0) and the APs
and ARs its stats; a hand case shows what class-agnostic means."""

import json

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fcos_jax.analysis import pr_curves
from fcos_jax.evaluation import proposal_eval


def _random_case(tmp_path, seed=0, images=6):
  rng = np.random.default_rng(seed)
  gt = {"images": [], "annotations": [],
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}
  results = []
  for i in range(1, images + 1):
    gt["images"].append({"id": i, "width": 200, "height": 200,
                         "file_name": f"{i}.jpg"})
    for _ in range(int(rng.integers(1, 6))):
      x, y = rng.uniform(0, 150, 2)
      w, h = rng.uniform(5, 50, 2)
      gt["annotations"].append({
          "id": len(gt["annotations"]) + 1, "image_id": i,
          "category_id": int(rng.choice([1, 3])), "bbox": [x, y, w, h],
          "area": w * h, "iscrowd": int(rng.uniform() < 0.1)})
      for _ in range(int(rng.integers(0, 3))):  # Jittered detections.
        j = rng.normal(0, 4, 4)
        results.append({"image_id": i, "category_id": int(rng.choice([1, 3])),
                        "bbox": [x + j[0], y + j[1], max(w + j[2], 1),
                                 max(h + j[3], 1)],
                        "score": float(rng.uniform())})
    for _ in range(3):  # And some false positives.
      results.append({"image_id": i, "category_id": 1,
                      "bbox": list(rng.uniform(0, 150, 2)) + [20.0, 20.0],
                      "score": float(rng.uniform(0, 0.5))})
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(gt))
  return str(path), results


def _reference(gt_json, results, max_dets):
  gt = COCO(gt_json)
  ev = COCOeval(gt, gt.loadRes(results), "bbox")
  ev.params.useCats = 0
  ev.params.maxDets = list(max_dets)
  ev.evaluate()
  ev.accumulate()
  ev.summarize()
  return ev


def test_curve_points_are_cocoeval_precision(tmp_path):
  gt_json, results = _random_case(tmp_path)
  curves = pr_curves.class_agnostic_curves(gt_json, results)
  ref = _reference(gt_json, results, (1, 10, 100))
  for iou, curve in curves.items():
    t = int(np.argmin(np.abs(ref.params.iouThrs - iou)))
    np.testing.assert_array_equal(curve, ref.eval["precision"][t, :, 0, 0, 2])
  assert sorted(curves) == [0.5, 0.75, 0.9]
  # AP at 0.50 and 0.75 are COCOeval's stats[1] and [2].
  assert np.isclose(pr_curves.average_precision(curves[0.5]), ref.stats[1])
  assert np.isclose(pr_curves.average_precision(curves[0.75]), ref.stats[2])
  assert curves[0.5].mean() > curves[0.9].mean()


def test_class_agnostic_ignores_the_class(tmp_path):
  # One box, found exactly but with the wrong class: AP 1 without classes.
  gt = {"images": [{"id": 7, "width": 50, "height": 50, "file_name": "a"}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 1,
                         "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
  path = tmp_path / "gt.json"
  path.write_text(json.dumps(gt))
  results = [{"image_id": 7, "category_id": 2, "bbox": [5, 5, 20, 20],
              "score": 0.9}]
  curves = pr_curves.class_agnostic_curves(str(path), results)
  for curve in curves.values():
    np.testing.assert_allclose(curve, np.ones(101), rtol=1e-12)  # COCOeval's eps


def test_proposal_recall_is_cocoeval_stats(tmp_path):
  gt_json, results = _random_case(tmp_path, seed=1)
  ids = [im["id"] for im in json.load(open(gt_json))["images"]]
  metrics = proposal_eval.proposal_evaluate(gt_json, results, ids)
  ref = _reference(gt_json, results, (100, 300, 1000))
  assert metrics == {name: float(ref.stats[i]) for name, i in zip(
      proposal_eval.PROPOSAL_METRIC_NAMES, range(6, 12))}
  # Fewer proposals never recall more.
  ten = proposal_eval.class_agnostic_eval(
      proposal_eval.load_ground_truth(gt_json),
      [r for r in results if r["score"] > 0.7], ids)
  assert ten.stats[8] <= metrics["AR1000"]


def test_png_is_written(tmp_path):
  gt_json, results = _random_case(tmp_path)
  curves = pr_curves.class_agnostic_curves(gt_json, results)
  pr_curves.write_png(curves, str(tmp_path / "pr.png"))
  from PIL import Image
  assert Image.open(tmp_path / "pr.png").size == (480, 400)
