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
from fcos_jax.inference.draw import MIN_SCORE, draw_detections

IOUS = (0.50, 0.75)


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


def plot_pr_curves(curves: dict[float, np.ndarray], width: int = 480,
                   height: int = 400, title: str = "Precision-recall"
                   ) -> np.ndarray:
  """uint8 [height, width, 3]: precision against recall, one line per IoU,
  drawn by matplotlib (axes, ticks, each curve's AP in the legend: the mean
  of its points, as COCOeval's AP)."""
  # The object API with the Agg canvas: no pyplot, no global backend.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=(width / 100, height / 100), dpi=100)
  canvas = FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for iou, p in sorted(curves.items()):
    p = np.asarray(p, np.float64)
    defined = p[p > -1]  # -1: COCOeval's "no ground truth".
    ap = float(defined.mean()) if defined.size else 0.0
    ax.plot(np.linspace(0, 1, len(p)), np.clip(p, 0, 1), linewidth=2,
            label=f"IoU {iou:.2f}: AP {ap:.3f}")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("recall")
  ax.set_ylabel("precision")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(loc="lower left")
  fig.tight_layout()
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def pr_curve_summaries(curves: dict[float, np.ndarray], num_gt: int,
                       prefix: str = "eval/pr_curve") -> tuple[dict, dict]:
  """(values, metadata) for a clu writer's `write_summaries`: each curve in
  TensorBoard's PR-curves dashboard. COCOeval keeps interpolated precision
  at 101 recall points, not counts per score threshold: the rows are those
  points (recall rising), and the counts are derived from them and the
  `num_gt` ground-truth boxes (TP = recall * num_gt, FP = TP (1 - p) / p,
  FN = num_gt - TP, TN = 0)."""
  from tensorboard.plugins.pr_curve import metadata as pr_metadata  # pylint: disable=import-outside-toplevel
  values, meta = {}, {}
  for iou, p in sorted(curves.items()):
    precision = np.clip(np.asarray(p, np.float64), 0, 1)
    recall = np.linspace(0, 1, len(precision))
    tp = recall * num_gt
    fp = np.where(precision > 0, tp * (1 - precision) / np.maximum(
        precision, 1e-12), 0.0)
    rows = np.stack([tp, fp, np.zeros_like(tp), num_gt - tp, precision,
                     recall]).astype(np.float32)
    tag = f"{prefix}_iou{round(100 * iou)}"
    values[tag] = rows
    meta[tag] = pr_metadata.create_summary_metadata(
        display_name=tag, description=f"COCOeval precision at IoU {iou:.2f}",
        num_thresholds=len(precision))
  return values, meta


def drawn_examples(gt: dict, image_dir: str, dets: dict, names, count: int = 4,
                   min_score: float = MIN_SCORE) -> list[np.ndarray]:
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
