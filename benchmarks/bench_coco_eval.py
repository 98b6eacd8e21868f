"""COCO evaluation time: `fcos_jax.evaluation.coco_eval.coco_evaluate`
(pycocotools: load ground truth and results, evaluate, accumulate,
summarise) on N synthetic images with COCO-like statistics: 80 categories,
~7 ground-truth boxes per image, 100 detections per image (the jittered true
boxes plus random ones), as `eval_step` gives them.

  python -m benchmarks.bench_coco_eval [--images 500] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks import timing
from fcos_jax.evaluation.coco_eval import coco_evaluate


def synthetic_coco(num_images: int, seed: int = 0, size=(480, 640),
                   dets_per_image: int = 100):
  """(ground-truth dict in COCO format, results list)."""
  rng = np.random.default_rng(seed)
  h, w = size
  cats = [{"id": i + 1, "name": f"c{i}"} for i in range(80)]
  images, anns, results = [], [], []
  for img_id in range(1, num_images + 1):
    images.append({"id": img_id, "height": h, "width": w})
    n = int(rng.integers(1, 15))
    xy = rng.uniform(0, [w - 20, h - 20], (n, 2))
    wh = rng.uniform(8, [w / 2, h / 2], (n, 2))
    wh = np.minimum(wh, [w, h] - xy)
    cls = rng.integers(1, 81, n)
    for (x, y), (bw, bh), c in zip(xy, wh, cls):
      anns.append({"id": len(anns) + 1, "image_id": img_id,
                   "category_id": int(c), "bbox": [x, y, bw, bh],
                   "area": bw * bh, "iscrowd": 0})
    # Detections: jittered true boxes, then random boxes, random scores.
    k = dets_per_image - n
    jitter = rng.normal(0, 4, (n, 4))
    boxes = np.concatenate([np.concatenate([xy, wh], 1) + jitter,
                            np.concatenate([rng.uniform(0, [w, h], (k, 2)),
                                            rng.uniform(4, 200, (k, 2))], 1)])
    labels = np.concatenate([cls, rng.integers(1, 81, k)])
    scores = rng.uniform(0.05, 1.0, dets_per_image)
    for b, c, s in zip(boxes, labels, scores):
      results.append({"image_id": img_id, "category_id": int(c),
                      "bbox": [float(v) for v in np.maximum(b, 0.5)],
                      "score": float(s)})
  gt = {"images": images, "annotations": anns, "categories": cats}
  return gt, results


def run(num_images: int = 500, repeats: int = 3) -> dict:
  """Seconds per full evaluation (stats over `repeats`)."""
  gt, results = synthetic_coco(num_images)
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "gt.json")
    with open(path, "w") as f:
      json.dump(gt, f)
    ids = [im["id"] for im in gt["images"]]
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      metrics = coco_evaluate(path, results, ids)
      times.append(time.perf_counter() - start)
  return {"images": num_images, "detections": len(results),
          "gt_boxes": len(gt["annotations"]), "s": timing.stats(times),
          "AP": metrics["AP"]}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=500)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args(argv)
  r = run(args.images, args.repeats)
  print(json.dumps({k: v for k, v in r.items()}, default=float))
  return r


if __name__ == "__main__":
  main()
