"""Class-agnostic precision-recall curves at IoU 0.50 / 0.75 / 0.90 (paper
Figs. 4-6, Table 7), from a detections JSON and the ground truth.

pycocotools does the matching and the curves: COCOeval with useCats=0
(a detection may match a box of any class, as the paper's class-agnostic
curves do), 100 detections per image, all areas; the curve at IoU t is
its precision array at the 101 recall points, and its AP the mean of it.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fcos_jax import errors, storage
from fcos_jax.evaluation import pictures, proposal_eval

IOUS = (0.50, 0.75, 0.90)
MAX_DETS = (1, 10, 100)


def class_agnostic_curves(gt_json: str, results: list[dict],
                          image_ids=None) -> dict[float, np.ndarray]:
  """{iou: precision [101]} at recall 0, 0.01, ..., 1; -1 where COCOeval
  has none (no ground truth). image_ids: default every ground-truth image."""
  gt = proposal_eval.load_ground_truth(gt_json)
  ids = gt.getImgIds() if image_ids is None else image_ids
  ev = proposal_eval.class_agnostic_eval(gt, results, ids, MAX_DETS)
  if ev is None:
    raise errors.DataError(f"No detections to draw curves of (ground truth "
                           f"{gt_json}).")
  precision = ev.eval["precision"]  # [T, R, K=1, A, M]
  out = {}
  for iou in IOUS:
    t = int(np.argmin(np.abs(ev.params.iouThrs - iou)))
    out[iou] = np.asarray(precision[t, :, 0, 0, -1], np.float64)
  return out


def average_precision(curve: np.ndarray) -> float:
  """COCOeval's AP of one curve: the mean of its defined points."""
  defined = curve[curve > -1]
  return float(defined.mean()) if defined.size else 0.0


def write_png(curves: dict[float, np.ndarray], path: str):
  """The curves drawn (precision against recall) as a PNG at `path`."""
  picture = pictures.plot_pr_curves(
      curves, title="Class-agnostic precision-recall")
  png = io.BytesIO()
  Image.fromarray(picture).save(png, format="PNG", optimize=True)
  storage.write_bytes_atomic(path, png.getvalue())
