"""Detections as COCO results records (the format of pycocotools'
`loadRes`, evaluation's detections JSON and predict's output)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def detections_to_coco(dets: dict, label_to_category_id: Sequence[int]) -> list[dict]:
  """Fixed-size detections (NumPy) -> COCO results entries.

  dets: image_id [N], boxes [N, K, 4] (x0, y0, x1, y1) original pixels,
        scores [N, K], classes [N, K] contiguous labels, valid [N, K].
  """
  lut = np.asarray(label_to_category_id)
  results = []
  for n, k in zip(*np.nonzero(dets["valid"])):
    x0, y0, x1, y1 = (float(v) for v in dets["boxes"][n, k])
    results.append({
        "image_id": int(dets["image_id"][n]),
        "category_id": int(lut[int(dets["classes"][n, k])]),
        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
        "score": round(float(dets["scores"][n, k]), 5),
    })
  return results
