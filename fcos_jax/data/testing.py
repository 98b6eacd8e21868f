"""Tiny COCO-format datasets for tests: filled boxes on a plain background."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image


def write_coco(directory: str, images, categories=((1, "a"), (2, "b")),
               fmt: str = "png", name: str = "instances.json",
               first_id: int = 1) -> tuple[str, str]:
  """Writes images and an instances JSON; returns (json path, image dir).

  images: list of (height, width, boxes), boxes a list of
  (x, y, w, h, category_id, iscrowd) in pixels; each box is painted as a
  filled rectangle of colour 255 (background 0), later boxes on top.
  fmt: "png" (lossless) or "jpg".
  """
  img_dir = os.path.join(directory, "images")
  os.makedirs(img_dir, exist_ok=True)
  js_images, anns = [], []
  for i, (h, w, boxes) in enumerate(images):
    image_id = first_id + i
    pixels = np.zeros((h, w, 3), np.uint8)
    for x, y, bw, bh, cat, crowd in boxes:
      pixels[int(y):int(y + bh), int(x):int(x + bw)] = 255
      anns.append({"id": len(anns) + 1, "image_id": image_id,
                   "category_id": cat, "bbox": [x, y, bw, bh],
                   "area": float(bw * bh), "iscrowd": int(crowd)})
    file_name = f"{image_id:06d}.{fmt}"
    Image.fromarray(pixels).save(os.path.join(img_dir, file_name))
    js_images.append({"id": image_id, "file_name": file_name, "width": w,
                      "height": h})
  path = os.path.join(directory, name)
  with open(path, "w") as f:
    json.dump({"images": js_images, "annotations": anns,
               "categories": [{"id": c, "name": n} for c, n in categories]}, f)
  return path, img_dir


def random_images(n: int, seed: int = 0, sizes=((48, 64), (64, 48)),
                  categories=(1, 2), empty_every: int = 0):
  """n (height, width, boxes) entries with 1-3 random boxes each."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    h, w = sizes[i % len(sizes)]
    boxes = []
    if not (empty_every and i % empty_every == 0):
      for _ in range(int(rng.integers(1, 4))):
        bw, bh = int(rng.integers(4, w // 2)), int(rng.integers(4, h // 2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        boxes.append((x, y, bw, bh, int(rng.choice(categories)), 0))
    out.append((h, w, boxes))
  return out
