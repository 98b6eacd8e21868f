"""Pictures of predictions: boxes with class names and scores, and the
per-level score heatmaps of the paper's Fig. 3/8 (PIL, on the host)."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_colour(label: int) -> tuple[int, int, int]:
  """A saturated colour per class, far from its neighbours' (golden-ratio
  hue steps), the same in every picture."""
  hue = (0.13 + 0.618033988749895 * int(label)) % 1.0
  r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
  return int(255 * r), int(255 * g), int(255 * b)


def _text_colour(rgb) -> tuple[int, int, int]:
  """Black on light label backgrounds, white on dark ones."""
  luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
  return (0, 0, 0) if luma > 140 else (255, 255, 255)


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one bitmap size.
    return ImageFont.load_default()


def _overlap(a, b) -> float:
  """Intersection area of rectangles a, b over the area of a."""
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  area = max((a[2] - a[0]) * (a[3] - a[1]), 1e-9)
  return max(w, 0) * max(h, 0) / area


# A box drawn over a better-scoring one with this IoU or more, of any class,
# is the same object: the picture shows only the better one.
DUPLICATE_IOU = 0.7
# Boxes below this score are left out of pictures: on the main command's
# model 0.3 still drew second guesses (a triangle's box labelled rectangle
# 0.33 beside its triangle 0.65; docs/predict_example.png), 0.5 does not.
MIN_SCORE = 0.5


def _iou(a, b) -> float:
  w = min(a[2], b[2]) - max(a[0], b[0])
  h = min(a[3], b[3]) - max(a[1], b[1])
  inter = max(w, 0.0) * max(h, 0.0)
  union = ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
           - inter)
  return inter / union if union > 0 else 0.0


def boxes_to_draw(boxes, scores, *, min_score: float = 0.0,
                  duplicate_iou: float = DUPLICATE_IOU) -> list[int]:
  """The indices of the detections a picture shows, best score first: those
  scoring `min_score` or more, less the near-duplicates, boxes whose IoU
  with a better-scoring shown box is `duplicate_iou` or more, whatever
  their classes. The model's NMS is per class, so one object can keep a box
  for each class it resembles ("dog 0.45" over "cat 0.62"): the picture
  shows one label per object, the detections (JSON, COCO AP) keep them all.
  duplicate_iou > 1 shows every box."""
  scores = np.asarray(scores, np.float32).reshape(-1)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  shown = []
  for k in np.argsort(-scores, kind="stable"):
    if scores[k] < min_score:
      break
    if all(_iou(boxes[k], boxes[j]) < duplicate_iou for j in shown):
      shown.append(int(k))
  return shown


def draw_detections(image: np.ndarray, boxes, scores, labels, names, *,
                    min_score: float = 0.0, min_side: int = 512,
                    duplicate_iou: float = DUPLICATE_IOU) -> Image.Image:
  """uint8 [h, w, 3] + detections (original pixels) -> a PIL picture of
  those `boxes_to_draw` shows (one label per object).

  Boxes in their class colour, lowest score first so the best are on top.
  Labels ("name 0.87", contrasting text on a tag of the box's colour) are
  placed best score first, above the box's top-left corner, else inside
  it, else below it, wherever they do not cover an earlier label; a label
  with no free place is left out (its box stays). Pictures whose short side
  is under `min_side` are enlarged first, so labels stay readable.
  """
  picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
  zoom = max(1.0, min_side / max(min(picture.height, picture.width), 1))
  if zoom > 1.0:
    picture = picture.resize((round(picture.width * zoom),
                              round(picture.height * zoom)), Image.BILINEAR)
  draw = ImageDraw.Draw(picture)
  h, w = picture.height, picture.width
  side = max(min(h, w), 1)
  width = max(1, round(side / 250))
  font = _font(max(11, round(side / 36)))
  scores = np.asarray(scores, np.float32)
  keep = boxes_to_draw(boxes, scores, min_score=min_score,
                       duplicate_iou=duplicate_iou)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * zoom
  for k in keep[::-1]:
    draw.rectangle([float(v) for v in boxes[k]],
                   outline=class_colour(int(labels[k])), width=width)
  placed = []
  for k in keep:
    x0, y0, x1, y1 = (float(v) for v in boxes[k])
    colour = class_colour(int(labels[k]))
    text = f"{names[k]} {float(scores[k]):.2f}"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 6, bottom - top + 4
    tx = min(max(x0, 0), max(w - tw, 0))
    for ty in (y0 - th, y0 + width, y1):
      rect = (tx, ty, tx + tw, ty + th)
      if ty >= 0 and ty + th <= h and all(_overlap(rect, r) < 0.1
                                          for r in placed):
        break
    else:
      continue
    placed.append(rect)
    draw.rectangle(rect, fill=colour)
    draw.text((tx + 3 - left, ty + 2 - top), text, fill=_text_colour(colour),
              font=font)
  return picture


def _heat_colours(values: np.ndarray) -> np.ndarray:
  """[h, w] in 0..1 -> uint8 [h, w, 3]: black, red, yellow, white."""
  v = np.clip(values, 0.0, 1.0)[..., None]
  stops = np.array([[0, 0, 0], [180, 0, 30], [255, 150, 0], [255, 255, 220]],
                   np.float32)
  x = v * (len(stops) - 1)
  i = np.minimum(np.floor(x).astype(int), len(stops) - 2)
  t = x - i
  return (stops[i[..., 0]] * (1 - t) + stops[i[..., 0] + 1] * t).astype(
      np.uint8)


def draw_heatmaps(image: np.ndarray, maps, strides, *, tile: int = 256,
                  alpha: float = 0.6) -> Image.Image:
  """The image with each level's score map over it, side by side.

  maps: per level [h_l, w_l] (the cells over the resized image); each map is
  stretched over the whole original image (nearest neighbour, so the cells
  show) and blended with it. One row: P3 (stride 8) ... P7 (stride 128),
  each tile `tile` pixels on the long side, titled with its level, stride
  and peak value.
  """
  base = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
  scale = tile / max(base.width, base.height)
  size = (max(1, round(base.width * scale)), max(1, round(base.height * scale)))
  base = base.resize(size, Image.BILINEAR)
  font = _font(max(10, tile // 18))
  title_h = max(14, tile // 12)
  sheet = Image.new("RGB", (len(maps) * (size[0] + 4), size[1] + title_h),
                    (255, 255, 255))
  draw = ImageDraw.Draw(sheet)
  for i, (m, s) in enumerate(zip(maps, strides)):
    heat = Image.fromarray(_heat_colours(np.asarray(m, np.float32))).resize(
        size, Image.NEAREST)
    x = i * (size[0] + 4)
    sheet.paste(Image.blend(base, heat, alpha), (x, title_h))
    peak = float(np.max(m)) if np.size(m) else 0.0
    draw.text((x + 2, 1), f"P{i + 3} (stride {s}) max {peak:.2f}",
              fill=(0, 0, 0), font=font)
  return sheet
