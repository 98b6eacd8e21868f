"""The pictures show one label per object: boxes of other classes over a
better-scoring box (the model's NMS is per class) are left out of the
drawing only; detections.json keeps them. Hand-built cases."""

import json
import types

import numpy as np
from PIL import Image

from fcos_jax.inference import draw, outputs

# A cat; the same object as a dog (IoU 1560 / 1639 = 0.952 with the cat);
# another cat overlapping the first (IoU 400 / 2800 = 0.143); a bird on the
# first cat below the score threshold.
BOXES = np.array([[10, 10, 50, 50], [11, 10, 50, 51], [30, 30, 70, 70],
                  [10, 10, 50, 50]], np.float32)
SCORES = np.array([0.62, 0.45, 0.5, 0.2], np.float32)
LABELS = np.array([0, 1, 0, 2])
NAMES = ["cat", "dog", "cat", "bird"]


def test_one_box_per_object_best_score_first():
  assert draw.boxes_to_draw(BOXES, SCORES, min_score=0.3) == [0, 2]
  # The default threshold lies between 0.143 and 0.952.
  assert 0.143 < draw.DUPLICATE_IOU < 0.952
  assert draw.boxes_to_draw(BOXES, SCORES, min_score=0.3,
                            duplicate_iou=0.96) == [0, 2, 1]
  assert draw.boxes_to_draw(BOXES, SCORES, min_score=0.0,
                            duplicate_iou=1.01) == [0, 2, 1, 3]
  # IoU exactly at the threshold is a duplicate: 50 / 100.
  half = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
  assert draw.boxes_to_draw(half, [0.9, 0.8], duplicate_iou=0.5) == [0]
  assert draw.boxes_to_draw(half, [0.9, 0.8], duplicate_iou=0.51) == [0, 1]
  assert draw.boxes_to_draw(np.zeros((0, 4)), np.zeros(0)) == []


def _has_colour(picture, label):
  return (np.asarray(picture) == draw.class_colour(label)).all(axis=-1).any()


def test_picture_leaves_out_the_duplicate_and_the_json_keeps_it(tmp_path):
  image = np.full((80, 80, 3), 128, np.uint8)
  pic = draw.draw_detections(image, BOXES, SCORES, LABELS, NAMES,
                             min_score=0.3, min_side=1)
  assert _has_colour(pic, 0) and not _has_colour(pic, 1)
  assert not _has_colour(pic, 2)  # Below min_score.
  every = draw.draw_detections(image, BOXES, SCORES, LABELS, NAMES,
                               min_score=0.3, min_side=1, duplicate_iou=1.01)
  assert _has_colour(every, 1)

  # predict's folder: the picture as above, every detection in the JSON.
  result = dict(image=image, boxes=BOXES, scores=SCORES, labels=LABELS,
                names=NAMES)
  det = types.SimpleNamespace(
      categories=[{"id": i + 1, "name": n}
                  for i, n in enumerate(["cat", "dog", "bird"])],
      predict_files=lambda paths, **kw: iter([(paths[0], result)]),
      to_coco=lambda rs, ids: [
          {"image_id": ids[0], "category_id": int(l) + 1, "score": float(s),
           "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                    float(b[3] - b[1])]}
          for r in rs for b, s, l in zip(r["boxes"], r["scores"],
                                         r["labels"])])
  out = tmp_path / "pred"
  out.mkdir()
  outputs.predict_to_folder(det, ["photo.jpg"], str(out), draw=True,
                            draw_min_score=0.3)
  records = json.loads((out / "detections.json").read_text())
  assert [r["category_name"] for r in records] == ["cat", "dog", "cat", "bird"]
  picture = Image.open(out / "draw" / "photo.png")
  assert _has_colour(picture, 0) and not _has_colour(picture, 1)
