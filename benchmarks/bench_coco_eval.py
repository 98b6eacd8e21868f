"""COCO evaluation time: `fcos_jax.evaluation.coco_eval.coco_evaluate`
(load ground truth and results, evaluate, accumulate, summarise) with each
backend, pycocotools and faster-coco-eval, taking turns, on N synthetic
images with COCO-like statistics: 80 categories, ~7 ground-truth boxes per
image, 100 detections per image (the jittered true boxes plus random ones),
as `eval_step` gives them.

  python -m benchmarks.bench_coco_eval [--images 5000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile

import numpy as np

from benchmarks import timing
from fcos_jax.evaluation.coco_eval import BACKENDS, coco_evaluate


def synthetic_coco(num_images: int, seed: int = 0, size=(480, 640),
                   dets_per_image: int = 100, num_categories: int = 80,
                   crowd_every: int = 0):
  """(ground-truth dict in COCO format, results list). crowd_every=n marks
  every n-th annotation iscrowd (0: none)."""
  rng = np.random.default_rng(seed)
  h, w = size
  cats = [{"id": i + 1, "name": f"c{i}"} for i in range(num_categories)]
  images, anns, results = [], [], []
  for img_id in range(1, num_images + 1):
    images.append({"id": img_id, "height": h, "width": w})
    n = int(rng.integers(1, 15))
    xy = rng.uniform(0, [w - 20, h - 20], (n, 2))
    wh = rng.uniform(8, [w / 2, h / 2], (n, 2))
    wh = np.minimum(wh, [w, h] - xy)
    cls = rng.integers(1, num_categories + 1, n)
    for (x, y), (bw, bh), c in zip(xy, wh, cls):
      crowd = int(crowd_every > 0 and (len(anns) + 1) % crowd_every == 0)
      anns.append({"id": len(anns) + 1, "image_id": img_id,
                   "category_id": int(c), "bbox": [x, y, bw, bh],
                   "area": bw * bh, "iscrowd": crowd})
    # Detections: jittered true boxes, then random boxes, random scores.
    k = dets_per_image - n
    jitter = rng.normal(0, 4, (n, 4))
    boxes = np.concatenate([np.concatenate([xy, wh], 1) + jitter,
                            np.concatenate([rng.uniform(0, [w, h], (k, 2)),
                                            rng.uniform(4, 200, (k, 2))], 1)])
    labels = np.concatenate([cls, rng.integers(1, num_categories + 1, k)])
    scores = rng.uniform(0.05, 1.0, dets_per_image)
    for b, c, s in zip(boxes, labels, scores):
      results.append({"image_id": img_id, "category_id": int(c),
                      "bbox": [float(v) for v in np.maximum(b, 0.5)],
                      "score": float(s)})
  gt = {"images": images, "annotations": anns, "categories": cats}
  return gt, results


def run(num_images: int = 5000, repeats: int = 1,
        backends=BACKENDS) -> dict:
  """Seconds per full evaluation of each backend (taking turns, `repeats`
  times), and the largest difference of their 12 numbers."""
  gt, results = synthetic_coco(num_images)
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "gt.json")
    with open(path, "w") as f:
      json.dump(gt, f)
    ids = [im["id"] for im in gt["images"]]
    metrics = {}

    def evaluate(backend):
      metrics[backend] = coco_evaluate(path, results, ids, backend=backend)

    timed = timing.time_interleaved(
        {b: functools.partial(evaluate, b) for b in backends}, repeats,
        warmup=0)
  out = {"images": num_images, "detections": len(results),
         "gt_boxes": len(gt["annotations"]),
         "backends": {b: {"s": timed[b]["s"], "AP": metrics[b]["AP"]}
                      for b in backends}}
  if len(backends) == 2:
    a, b = backends
    out["speedup"] = timed[a]["s"]["median"] / timed[b]["s"]["median"]
    out["max_abs_diff"] = max(abs(metrics[a][k] - metrics[b][k])
                              for k in metrics[a])
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=5000)
  p.add_argument("--repeats", type=int, default=1)
  args = p.parse_args(argv)
  r = run(args.images, args.repeats)
  print(json.dumps(r, default=float))
  return r


if __name__ == "__main__":
  main()
