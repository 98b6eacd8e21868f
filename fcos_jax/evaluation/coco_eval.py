"""COCO AP with pycocotools (or faster-coco-eval), from the fixed-size
detections of `eval_step`.

Every evaluated image counts, including those with no detection (restricting
`imgIds` to images with detections would inflate AP).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Sequence

from fcos_jax import errors, storage

METRIC_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

_TABLE_LINES = (
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 10 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ]",
    "Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ]",
)


# config.eval_backend -> module that provides COCO and the COCOeval class.
# faster-coco-eval reimplements COCOeval's evaluate/accumulate in C++ and
# gives the same 12 numbers (tests/test_coco_eval_backends.py); pycocotools is the
# reference the published numbers come from, so it stays the default.
BACKENDS = ("pycocotools", "faster_coco_eval")


def _coco_classes(backend: str):
  """(COCO, COCOeval) of `backend`."""
  if backend == "pycocotools":
    from pycocotools.coco import COCO  # pylint: disable=import-outside-toplevel
    from pycocotools.cocoeval import COCOeval  # pylint: disable=import-outside-toplevel
    return COCO, COCOeval
  if backend == "faster_coco_eval":
    try:
      import faster_coco_eval  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(
          "config.eval_backend='faster_coco_eval' needs the faster-coco-eval "
          "package (pip install -r requirements.txt), or set "
          "--config.eval_backend=pycocotools") from e
    return faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
  raise errors.ConfigError(f"config.eval_backend={backend!r} is not one of {BACKENDS}")


def check_backend(backend: str) -> None:
  """Raises the error coco_evaluate would give for `backend`, before any work."""
  _coco_classes(backend)


def format_table(metrics: dict) -> str:
  return "\n".join(f" {line} = {metrics[name]:.3f}"
                   for line, name in zip(_TABLE_LINES, METRIC_NAMES))


def coco_evaluate(gt_json: str, results: list[dict],
                  image_ids: Sequence[int], return_eval: bool = False,
                  backend: str = "pycocotools"):
  """Runs COCOeval (bbox) over `image_ids`; returns the 12 standard numbers
  (and, with `return_eval`, the accumulated COCOeval, None without
  detections). backend: one of BACKENDS."""
  COCO, COCOeval = _coco_classes(backend)  # pylint: disable=invalid-name

  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO()  # Read through the path layer: gt_json may be a URL.
    gt.dataset = storage.read_json(gt_json)
    gt.createIndex()
  image_ids = sorted(set(int(i) for i in image_ids))
  missing = set(image_ids) - set(gt.getImgIds())
  if missing:
    raise errors.DataError(
        f"{len(missing)} evaluated image id(s) are not in {gt_json}, e.g. "
        f"{sorted(missing)[:5]}: the evaluation split and the ground truth "
        "file do not match.")
  if not results:
    logging.warning("No detections at all: every metric is 0.")
    zeros = {name: 0.0 for name in METRIC_NAMES}
    return (zeros, None) if return_eval else zeros
  log = io.StringIO()
  with contextlib.redirect_stdout(log):
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.imgIds = image_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  # faster-coco-eval appends extra figures after the standard 12.
  metrics = {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats[:12])}
  return (metrics, ev) if return_eval else metrics
