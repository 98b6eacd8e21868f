"""Throughput of the training input pipeline on this machine.

Decode + box clean-up + resize + flip + pad + batch, from the COCO-format
source, on a generated set of large synthetic JPEGs (default 800 x 1333,
so the official resize leaves them unchanged; --image-size 480 640 gives
COCO-like images that are upscaled to 800 x 1066).

  python benchmarks/bench_input.py [--smoke] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fcos_jax.data.config import default_data_config  # noqa: E402
from fcos_jax.data.pipeline import build_train_dataset  # noqa: E402
from fcos_jax.data.synthetic import ensure_synthetic_dataset  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true",
                 help="Tiny run (few images and steps) to check it works.")
  p.add_argument("--json", help="Write the results to this JSON file.")
  p.add_argument("--images", type=int, default=200, help="Images generated.")
  p.add_argument("--image-size", type=int, nargs=2, default=(800, 1333),
                 metavar=("H", "W"))
  p.add_argument("--batch", type=int, default=8, help="Images per batch.")
  p.add_argument("--steps", type=int, default=40, help="Timed batches.")
  p.add_argument("--dir", default="/tmp/fcos_jax_bench_input",
                 help="Where the generated images are kept between runs.")
  args = p.parse_args(argv)
  if args.smoke:
    args.images, args.steps, args.batch = 8, 3, 2

  h, w = args.image_size
  t0 = time.perf_counter()
  files = ensure_synthetic_dataset(
      os.path.join(args.dir, f"{h}x{w}_{args.images}"), num_train=args.images,
      num_val=0, image_size=(h, w), seed=0)
  gen_s = time.perf_counter() - t0

  cfg = default_data_config()
  cfg.source = "coco_format"
  cfg.coco.train_json, cfg.coco.train_images = (files["train_json"],
                                                files["train_images"])
  it = build_train_dataset(cfg, args.batch, 0, 1, seed=0)
  for _ in range(2):  # Warm-up: graph building, thread pools, first files.
    next(it)
  t0 = time.perf_counter()
  for _ in range(args.steps):
    batch = next(it)
  dt = time.perf_counter() - t0
  cores = os.cpu_count() or 1
  ips = args.steps * args.batch / dt
  result = {
      "images_per_s": round(ips, 2),
      "cores": cores,
      "images_per_s_per_core": round(ips / cores, 2),
      "image_size": [h, w], "canvas": list(batch["image"].shape[1:3]),
      "batch": args.batch, "steps": args.steps, "dataset_images": args.images,
      "generation_s": round(gen_s, 1), "smoke": args.smoke,
  }
  print(json.dumps(result))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
