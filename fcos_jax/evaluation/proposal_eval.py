"""Average recall of region proposals with pycocotools (FCOS as an RPN).

Proposals are scored as the COCO proposal benchmark does: class-agnostic
(`useCats=0`, every box may match any ground-truth box) with 100, 300 and
1000 boxes per image; the recall at each maxDets is averaged over IoU
0.50:0.05:0.95 by COCOeval itself. Crowd boxes are COCOeval's ignore
regions, as in detection.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Sequence

from fcos_jax import errors, storage

MAX_DETS = (100, 300, 1000)
# COCOeval.stats indices 6-11 with maxDets = MAX_DETS: AR at each maxDets
# (all areas), then small / medium / large at the largest.
PROPOSAL_METRIC_NAMES = ("AR100", "AR300", "AR1000", "ARs1000", "ARm1000",
                         "ARl1000")
_STATS_INDEX = (6, 7, 8, 9, 10, 11)


def load_ground_truth(gt_json: str):
  """A pycocotools COCO of `gt_json` (read through the path layer)."""
  from pycocotools.coco import COCO
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO()
    gt.dataset = storage.read_json(gt_json)
    gt.createIndex()
  return gt


def class_agnostic_eval(gt, results: list[dict], image_ids: Sequence[int],
                        max_dets: Sequence[int] = MAX_DETS):
  """An evaluated and accumulated COCOeval (bbox, useCats=0) of `results`
  (COCO results entries) on `image_ids`, or None without results."""
  from pycocotools.cocoeval import COCOeval
  image_ids = sorted(set(int(i) for i in image_ids))
  missing = set(image_ids) - set(gt.getImgIds())
  if missing:
    raise errors.DataError(
        f"{len(missing)} evaluated image id(s) are not in the ground truth, "
        f"e.g. {sorted(missing)[:5]}: the detections and the ground-truth "
        "file do not match.")
  if not results:
    return None
  with contextlib.redirect_stdout(io.StringIO()):
    ev = COCOeval(gt, gt.loadRes(results), "bbox")
    ev.params.imgIds = image_ids
    ev.params.useCats = 0
    ev.params.maxDets = [int(m) for m in max_dets]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  return ev


def proposal_evaluate(gt_json: str, results: list[dict],
                      image_ids: Sequence[int]) -> dict[str, float]:
  """AR@100/300/1000 and AR small/medium/large @1000 of proposals."""
  ev = class_agnostic_eval(load_ground_truth(gt_json), results, image_ids)
  if ev is None:
    logging.warning("No proposals at all: every recall is 0.")
    return {name: 0.0 for name in PROPOSAL_METRIC_NAMES}
  return {name: float(ev.stats[i])
          for name, i in zip(PROPOSAL_METRIC_NAMES, _STATS_INDEX)}


def format_proposal_table(metrics: dict) -> str:
  lines = []
  for name in PROPOSAL_METRIC_NAMES:
    area = {"s": "small", "m": "medium", "l": "large"}.get(name[2:3], "all")
    dets = name.lstrip("ARsml")
    lines.append(f" Average Recall     (AR) @[ IoU=0.50:0.95 | area={area:>6s} "
                 f"| maxDets={int(dets):>4d} ] = {metrics[name]:.3f}")
  return "\n".join(lines)
