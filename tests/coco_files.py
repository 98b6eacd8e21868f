"""Tiny COCO-format datasets for tests: filled boxes on a plain background."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fcos_jax import storage


def write_coco(directory: str, images, categories=((1, "a"), (2, "b")),
               fmt: str = "png", name: str = "instances.json",
               first_id: int = 1) -> tuple[str, str]:
  """Writes images and an instances JSON; returns (json path, image dir).

  images: list of (height, width, boxes), boxes a list of
  (x, y, w, h, category_id, iscrowd) in pixels; each box is painted as a
  filled rectangle of colour 255 (background 0), later boxes on top.
  fmt: "png" (lossless) or "jpg". `directory` may be any folder
  `fcos_jax.storage` reaches (gs:// too); the JSON is written last.
  """
  img_dir = storage.join(directory, "images")
  storage.makedirs(img_dir)
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
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format={"jpg": "JPEG"}.get(fmt, fmt))
    storage.write_bytes_atomic(storage.join(img_dir, file_name),
                               buf.getvalue())
    js_images.append({"id": image_id, "file_name": file_name, "width": w,
                      "height": h})
  path = storage.join(directory, name)
  storage.write_json_atomic(
      path, {"images": js_images, "annotations": anns,
             "categories": [{"id": c, "name": n} for c, n in categories]})
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


def write_coco80(directory: str) -> tuple[str, str]:
  """Two JPEG images with boxes of three COCO categories (1, 18, 90) and
  all 80 declared, as a converted COCO model's run reads them: (json
  path, image dir)."""
  from fcos_jax.convert import torchvision as tv
  cats = [(c["id"], c["name"]) for c in tv.coco_categories()]
  images = random_images(2, sizes=((100, 150), (150, 100)),
                         categories=(1, 18, 90))
  return write_coco(directory, images, categories=cats, fmt="jpg")


def val_flags(gt_json: str, img_dir: str) -> list[str]:
  """Config overrides that evaluate a run on (gt_json, img_dir): one
  192x192 canvas (one compile), batch 1, candidates above 0.02."""
  return ["--config.data.source=coco_format",
          f"--config.data.coco.val_json={gt_json}",
          f"--config.data.coco.val_images={img_dir}",
          "--config.data.min_size=128", "--config.data.max_size=192",
          "--config.data.canvases=((192,192),)",
          "--config.eval_batch_size=1",
          "--config.model.inference.score_thresh=0.02"]
