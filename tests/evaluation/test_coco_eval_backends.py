"""faster-coco-eval gives pycocotools' 12 numbers (and PR arrays)."""

import numpy as np
import pytest

from fcos_jax.evaluation import coco_eval
from fcos_jax.inference import coco_results
from test_coco_eval import _gt  # The same two-image ground truth.

pytest.importorskip("faster_coco_eval")

# Each case: two images' boxes (x0, y0, x1, y1) and labels, against one true
# box per image (see _gt): exact, missed, wrong class, shifted.
CASES = {
    "perfect": ([[10, 10, 40, 30], [50, 30, 90, 70]], [0, 1], [True, True]),
    "second_missed": ([[10, 10, 40, 30], [50, 30, 90, 70]], [0, 1], [True, False]),
    "wrong_class": ([[10, 10, 40, 30], [50, 30, 90, 70]], [1, 0], [True, True]),
    "shifted": ([[10, 10, 40, 30], [55, 35, 95, 75]], [0, 1], [True, True]),
}


def _both(gt_json, results, ids):
  out = {}
  for backend in coco_eval.BACKENDS:
    out[backend] = coco_eval.coco_evaluate(gt_json, results, ids,
                                           return_eval=True, backend=backend)
  return out["pycocotools"], out["faster_coco_eval"]


def _assert_same(ref, fast):
  (m_ref, ev_ref), (m_fast, ev_fast) = ref, fast
  assert list(m_fast) == list(coco_eval.METRIC_NAMES)
  for name in coco_eval.METRIC_NAMES:
    assert m_fast[name] == pytest.approx(m_ref[name], abs=1e-4), name
  np.testing.assert_allclose(ev_fast.eval["precision"],
                             ev_ref.eval["precision"], atol=1e-4)
  np.testing.assert_allclose(ev_fast.eval["recall"], ev_ref.eval["recall"],
                             atol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_cases_match_pycocotools(tmp_path, case):
  boxes, classes, valid = CASES[case]
  dets = {"image_id": np.array([1, 2]),
          "boxes": np.array(boxes, np.float32).reshape(2, 1, 4),
          "scores": np.full((2, 1), 0.9, np.float32),
          "classes": np.array(classes, np.int32).reshape(2, 1),
          "valid": np.array(valid).reshape(2, 1)}
  results = coco_results.detections_to_coco(dets, [3, 7])
  _assert_same(*_both(_gt(tmp_path), results, [1, 2]))


def test_no_detections_and_unknown_backend(tmp_path):
  m = coco_eval.coco_evaluate(_gt(tmp_path), [], [1, 2],
                              backend="faster_coco_eval")
  assert m == {name: 0.0 for name in coco_eval.METRIC_NAMES}
  with pytest.raises(ValueError, match="eval_backend='cocoapi'"):
    coco_eval.check_backend("cocoapi")


def test_pr_curves_from_faster_backend(tmp_path):
  from fcos_jax.evaluation import pictures
  boxes, classes, valid = CASES["shifted"]
  dets = {"image_id": np.array([1, 2]),
          "boxes": np.array(boxes, np.float32).reshape(2, 1, 4),
          "scores": np.full((2, 1), 0.9, np.float32),
          "classes": np.array(classes, np.int32).reshape(2, 1),
          "valid": np.array(valid).reshape(2, 1)}
  results = coco_results.detections_to_coco(dets, [3, 7])
  ref, fast = _both(_gt(tmp_path), results, [1, 2])
  for iou in (0.5, 0.75):
    np.testing.assert_allclose(pictures.pr_curves(fast[1])[iou],
                               pictures.pr_curves(ref[1])[iou], atol=1e-12)


@pytest.mark.slow
def test_5000_synthetic_images_match_pycocotools(tmp_path):
  from benchmarks.bench_coco_eval import synthetic_coco
  # 5,000 images, every 9th true box a crowd, images without any detection
  # (the last 500), few categories so that pycocotools takes seconds.
  gt, results = synthetic_coco(5000, seed=1, dets_per_image=20,
                               num_categories=4, crowd_every=9)
  results = [r for r in results if r["image_id"] <= 4500]
  ids = [im["id"] for im in gt["images"]]
  _assert_same(*_both(_gt(tmp_path, gt), results, ids))


def test_unknown_backend_stops_training_before_any_work(tmp_path):
  from fcos_jax.configs import synthetic_cpu
  from fcos_jax.train import loop
  config = synthetic_cpu.get_config()
  config.eval_backend = "cocoapi"
  config.data.synthetic.dir = str(tmp_path / "data")
  with pytest.raises(ValueError, match="eval_backend='cocoapi' is not one of"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
