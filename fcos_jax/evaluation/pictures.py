"""What an evaluation shows a person: PR curves and a few drawn images.

`pr_curves` reads COCOeval's own accumulated precision (no re-computation):
precision at each of its 101 recall points, averaged over the classes that
have ground truth, at IoU 0.50 and 0.75, all areas, 100 detections.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from fcos_jax import storage
from fcos_jax.inference.draw import draw_detections

IOUS = (0.50, 0.75)
_COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44))


def pr_curves(ev) -> dict[float, np.ndarray]:
  """{iou: precision [101]} from an accumulated COCOeval (bbox)."""
  precision = ev.eval["precision"]  # [T, R, K, A, M]
  out = {}
  for iou in IOUS:
    t = int(np.argmin(np.abs(ev.params.iouThrs - iou)))
    p = precision[t, :, :, 0, -1]  # All areas, the largest maxDets.
    have = (p > -1).any(axis=0)  # Classes with ground truth.
    out[iou] = (p[:, have].mean(axis=1) if have.any()
                else np.zeros(p.shape[0]))
  return out


def plot_pr_curves(curves: dict[float, np.ndarray], size: int = 320) -> np.ndarray:
  """uint8 [size, size, 3]: precision (y) against recall (x), one line each."""
  img = Image.new("RGB", (size, size), "white")
  draw = ImageDraw.Draw(img)
  pad = 32
  lo, hi = pad, size - pad
  draw.rectangle([lo, lo, hi, hi], outline=(0, 0, 0))
  for v in (0.25, 0.5, 0.75):
    x = lo + v * (hi - lo)
    draw.line([x, lo, x, hi], fill=(220, 220, 220))
    draw.line([lo, hi - v * (hi - lo), hi, hi - v * (hi - lo)],
              fill=(220, 220, 220))
  draw.text((size // 2 - 16, hi + 8), "recall", fill=(0, 0, 0))
  draw.text((4, 8), "precision", fill=(0, 0, 0))
  for k, (iou, p) in enumerate(sorted(curves.items())):
    recall = np.linspace(0, 1, len(p))
    points = [(lo + r * (hi - lo), hi - q * (hi - lo)) for r, q in
              zip(recall, np.clip(p, 0, 1))]
    draw.line(points, fill=_COLOURS[k % len(_COLOURS)], width=2)
    draw.text((hi - 110, lo + 8 + 14 * k),
              f"IoU {iou:.2f}: AP {float(np.mean(np.clip(p, 0, 1))):.3f}",
              fill=_COLOURS[k % len(_COLOURS)])
  return np.asarray(img)


def drawn_examples(gt: dict, image_dir: str, dets: dict, names, count: int = 4,
                   min_score: float = 0.3) -> list[np.ndarray]:
  """The first `count` evaluated images with the ground truth (white) and
  the detections (class colours, name and score) drawn."""
  by_id = {int(i): k for k, i in enumerate(dets["image_id"])}
  images = [im for im in gt["images"] if int(im["id"]) in by_id][:count]
  boxes_of = {}
  for a in gt["annotations"]:
    x, y, w, h = a["bbox"]
    boxes_of.setdefault(int(a["image_id"]), []).append((x, y, x + w, y + h))
  out = []
  for im in images:
    pixels = Image.open(io.BytesIO(storage.read_bytes(
        storage.join(image_dir, im["file_name"])))).convert("RGB")
    draw = ImageDraw.Draw(pixels)
    for box in boxes_of.get(int(im["id"]), []):
      draw.rectangle(box, outline=(255, 255, 255))
    k = by_id[int(im["id"])]
    valid = dets["valid"][k].astype(bool)
    labels = dets["classes"][k][valid]
    picture = draw_detections(
        np.asarray(pixels), dets["boxes"][k][valid], dets["scores"][k][valid],
        labels, [names[int(l)] for l in labels], min_score=min_score,
        min_side=256)
    out.append(np.asarray(picture.resize((256, round(256 * picture.height /
                                                        picture.width)))))
  return out
