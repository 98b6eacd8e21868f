"""Post-processing against a NumPy reference and torchvision's FCOS."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fcos_jax.model import config as config_lib
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.postprocess import make_postprocess_fn, postprocess
from fcos_jax.model.outputs import HeadOutputs
from test_nms import numpy_greedy_nms

CANVAS = (128, 256)  # Levels 16x32, 8x16, 4x8, 2x4, 1x2.
NUM_CLASSES = 6


def head_outputs(batch, num_locations, num_classes, cfg, seed):
  """Random head outputs with many candidates above either threshold:
  background logits near -6, and 15% of the locations with a few confident
  classes. Regression in stride units (norm_reg_targets) or pixels."""
  rng = np.random.default_rng(seed)
  cls = rng.normal(-6.0, 1.0, (batch, num_locations, num_classes))
  for b in range(batch):
    loc = rng.choice(num_locations, num_locations * 15 // 100, replace=False)
    for _ in range(2):
      cls[b, loc, rng.integers(0, num_classes, len(loc))] = rng.uniform(
          -3, 5, len(loc))
  reg = rng.uniform(0.1, 4.0, (batch, num_locations, 4))
  if not cfg.norm_reg_targets:
    reg = reg * 24.0  # Pixels.
  ctr = rng.normal(0.5, 1.5, (batch, num_locations))
  return HeadOutputs(cls_logits=cls.astype(np.float32),
                     box_regression=reg.astype(np.float32),
                     centerness=ctr.astype(np.float32))


def image_sizes(batch, canvas, seed):
  """Resized sizes inside the canvas (some padded) and original sizes."""
  rng = np.random.default_rng(seed)
  image_hw = np.stack([rng.integers(canvas[0] // 2, canvas[0] + 1, batch),
                       rng.integers(canvas[1] // 2, canvas[1] + 1, batch)], 1)
  image_hw[0] = canvas
  orig_hw = (image_hw * rng.uniform(0.5, 3.0, (batch, 1))).astype(np.int32)
  return image_hw.astype(np.int32), orig_hw


def sigmoid32(x):
  return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def reference_postprocess(outputs, locations, image_hw, orig_hw, cfg):
  """Per image, per level, with NumPy boolean indexing and sorting, as the
  official FCOS / torchvision code does. Returns a list of dicts."""
  results = []
  c = cfg.num_classes
  for b in range(image_hw.shape[0]):
    boxes, scores, classes = [], [], []
    for level, stride in enumerate(cfg.strides):
      sl = locations.level_slice(level)
      prob = sigmoid32(outputs.cls_logits[b, sl])
      ctr = sigmoid32(outputs.centerness[b, sl])[:, None]
      if cfg.inference.score_thresh_on == "prob":
        cand, rank = prob > cfg.inference.score_thresh, prob * ctr
      else:
        rank = np.sqrt(prob * ctr)
        cand = rank > cfg.inference.score_thresh
      flat = np.flatnonzero(cand.ravel())
      order = np.argsort(-rank.ravel()[flat], kind="stable")
      idx = flat[order[:cfg.inference.pre_nms_topk]]
      loc, cl = idx // c, idx % c
      d = outputs.box_regression[b, sl][loc]
      if cfg.norm_reg_targets:
        d = d * np.float32(stride)
      x, y = locations.points[sl][loc].T
      box = np.stack([x - d[:, 0], y - d[:, 1], x + d[:, 2], y + d[:, 3]], 1)
      h, w = image_hw[b]
      if cfg.inference.clip_boxes:
        box = np.clip(box, 0, np.array([w, h, w, h], np.float32))
      keep = np.ones(len(box), bool)
      if cfg.inference.min_box_size >= 0:  # mmdetection's min_bbox_size.
        keep = ((box[:, 2] - box[:, 0] > cfg.inference.min_box_size)
                & (box[:, 3] - box[:, 1] > cfg.inference.min_box_size))
      boxes.append(box[keep])
      scores.append(np.sqrt((prob * ctr).ravel()[idx])[keep])
      classes.append(cl[keep])
    boxes, scores, classes = (np.concatenate(x) for x in (boxes, scores,
                                                          classes))
    keep = numpy_greedy_nms(boxes, scores, classes, np.ones(len(scores), bool),
                            cfg.inference.nms_iou, cfg.inference.max_detections)
    ratio = orig_hw[b].astype(np.float32) / image_hw[b].astype(np.float32)
    scale = np.array([ratio[1], ratio[0], ratio[1], ratio[0]], np.float32)
    out = boxes[keep] * scale
    if cfg.inference.clip_boxes:
      out = np.clip(out, 0, np.array([orig_hw[b][1], orig_hw[b][0]] * 2,
                                     np.float32))
    results.append({"boxes": out, "scores": scores[keep],
                    "classes": classes[keep]})
  return results


def assert_matches(got, want, max_diff_frac=0.0):
  """Detections matched in score order: boxes within 1e-2 px, scores within
  1e-4, same classes. `max_diff_frac` tolerates a tail of near-ties."""
  for b, ref in enumerate(want):
    n = len(ref["scores"])
    valid = np.asarray(got["valid"][b])
    assert n >= 20, "too few detections for a meaningful comparison"
    assert valid.sum() == n and valid[:n].all()
    boxes = np.asarray(got["boxes"][b][:n])
    scores = np.asarray(got["scores"][b][:n])
    classes = np.asarray(got["classes"][b][:n])
    same = ((np.abs(boxes - ref["boxes"]).max(1) <= 1e-2) &
            (np.abs(scores - ref["scores"]) <= 1e-4) &
            (classes == ref["classes"]))
    assert (~same).sum() <= max_diff_frac * n, (
        f"image {b}: {(~same).sum()} of {n} detections differ, first at "
        f"{np.flatnonzero(~same)[:5]}")
    # Padding slots are zeros.
    assert not np.asarray(got["boxes"][b][n:]).any()
    assert not np.asarray(got["scores"][b][n:]).any()


@pytest.mark.parametrize("preset,topk,max_det", [
    ("official", 60, 40), ("paper", 1000, 50), ("torchvision", 60, 40)])
def test_matches_numpy_reference(preset, topk, max_det):
  cfg = config_lib.PRESETS[preset](num_classes=NUM_CLASSES,
                                   pre_nms_topk=topk, max_detections=max_det)
  locations = compute_locations(CANVAS, cfg)
  outputs = head_outputs(3, locations.num_locations, NUM_CLASSES, cfg, seed=1)
  image_hw, orig_hw = image_sizes(3, CANVAS, seed=2)
  got = make_postprocess_fn(locations, cfg)(outputs, image_hw, orig_hw)
  want = reference_postprocess(outputs, locations, image_hw, orig_hw, cfg)
  assert_matches(got, want)
  assert got["boxes"].shape == (3, max_det, 4)
  assert got["classes"].dtype == np.int32


@pytest.mark.parametrize("factor", [1, 3])
def test_fast_and_full_paths_agree(monkeypatch, factor):
  """Level 0 (512 locations) holds about 80 candidate locations: cap = 60
  sends it down the full path, cap = 180 down the gathered fast path."""
  from fcos_jax.core import postprocess as module
  monkeypatch.setattr(module, "CANDIDATE_LOCATIONS_PER_TOPK", factor)
  cfg = config_lib.official(num_classes=NUM_CLASSES, pre_nms_topk=60,
                            max_detections=40)
  locations = compute_locations(CANVAS, cfg)
  outputs = head_outputs(3, locations.num_locations, NUM_CLASSES, cfg, seed=9)
  image_hw, orig_hw = image_sizes(3, CANVAS, seed=10)
  sl = locations.level_slice(0)
  prob = sigmoid32(outputs.cls_logits[:, sl])
  n_loc = (prob > cfg.inference.score_thresh).any(-1).sum(-1)
  cap = factor * cfg.inference.pre_nms_topk
  assert (n_loc.max() > cap) == (factor == 1), n_loc
  got = make_postprocess_fn(locations, cfg)(outputs, image_hw, orig_hw)
  want = reference_postprocess(outputs, locations, image_hw, orig_hw, cfg)
  assert_matches(got, want)


def test_no_candidates_gives_no_detections():
  cfg = config_lib.official(num_classes=NUM_CLASSES)
  locations = compute_locations(CANVAS, cfg)
  outputs = head_outputs(2, locations.num_locations, NUM_CLASSES, cfg, seed=3)
  outputs = outputs.replace(cls_logits=np.full_like(outputs.cls_logits, -10.0))
  image_hw, orig_hw = image_sizes(2, CANVAS, seed=4)
  got = make_postprocess_fn(locations, cfg)(outputs, image_hw, orig_hw)
  assert not np.asarray(got["valid"]).any()
  assert not np.asarray(got["boxes"]).any()


@pytest.mark.parametrize("clip_boxes,min_box_size", [(True, 0.0),
                                                      (False, -1.0),
                                                      (False, 20.0)])
def test_clipping_and_small_boxes_match_numpy_reference(clip_boxes,
                                                        min_box_size):
  """mmdetection's choices: empty boxes dropped (min_bbox_size 0), TOOD's
  boxes not clipped; and a larger minimum size. A third of the boxes reach
  far beyond the image (empty once clipped, if they start outside), a
  fifth are about 0 wide."""
  cfg = config_lib.official(num_classes=NUM_CLASSES, pre_nms_topk=60,
                            max_detections=40, clip_boxes=clip_boxes,
                            min_box_size=min_box_size)
  locations = compute_locations(CANVAS, cfg)
  outputs = head_outputs(3, locations.num_locations, NUM_CLASSES, cfg, seed=1)
  reg = np.asarray(outputs.box_regression).copy()
  reg[:, ::3] *= 8.0
  reg[:, 1::5, 0] = -reg[:, 1::5, 2] + 0.001
  outputs = outputs.replace(box_regression=reg)
  image_hw, orig_hw = image_sizes(3, CANVAS, seed=2)
  got = make_postprocess_fn(locations, cfg)(outputs, image_hw, orig_hw)
  want = reference_postprocess(outputs, locations, image_hw, orig_hw, cfg)
  assert_matches(got, want)
  boxes = np.asarray(got["boxes"])[np.asarray(got["valid"])]
  if not clip_boxes:  # Some boxes leave the image.
    assert (boxes < 0).any()
  default = make_postprocess_fn(locations, cfg.replace(
      clip_boxes=True, min_box_size=-1.0))(outputs, image_hw, orig_hw)
  assert not np.array_equal(np.asarray(default["boxes"]),
                            np.asarray(got["boxes"]))


def test_boxes_clipped_to_image_not_canvas():
  cfg = config_lib.official(num_classes=NUM_CLASSES)
  locations = compute_locations(CANVAS, cfg)
  outputs = head_outputs(2, locations.num_locations, NUM_CLASSES, cfg, seed=5)
  outputs = outputs.replace(  # Boxes far beyond the image.
      box_regression=outputs.box_regression * 10.0)
  image_hw = np.array([[100, 150], [64, 200]], np.int32)
  got = make_postprocess_fn(locations, cfg)(outputs, image_hw, image_hw)
  boxes, valid = np.asarray(got["boxes"]), np.asarray(got["valid"])
  assert valid.sum() > 10
  for b in range(2):
    h, w = image_hw[b]
    bx = boxes[b][valid[b]]
    # At the image's edge, not the canvas's: exactly on CPU, within an ulp
    # of the orig / resized ratio on GPU (inexact division there).
    assert bx.min() >= 0
    assert bx[:, [0, 2]].max() <= w and bx[:, [1, 3]].max() <= h
    assert bx[:, [0, 2]].max() == pytest.approx(w, rel=1e-6)
    assert bx[:, [1, 3]].max() == pytest.approx(h, rel=1e-6)


def test_bad_shapes_are_named():
  cfg = config_lib.official(num_classes=NUM_CLASSES)
  locations = compute_locations(CANVAS, cfg)
  outputs = head_outputs(1, locations.num_locations, NUM_CLASSES, cfg, seed=6)
  hw = np.array([CANVAS], np.int32)
  with pytest.raises(ValueError, match="cls_logits.*num_classes"):
    postprocess(outputs, locations, hw, hw, cfg.replace(num_classes=7))
  with pytest.raises(ValueError, match="orig_hw"):
    postprocess(outputs, locations, hw, hw[0], cfg)
  with pytest.raises(TypeError, match="HeadOutputs"):
    postprocess(dataclasses.asdict(outputs), locations, hw, hw, cfg)


@pytest.mark.torch
def test_matches_torchvision_fcos():
  torch = pytest.importorskip("torch")
  detection = pytest.importorskip("torchvision.models.detection")
  cfg = config_lib.torchvision(num_classes=NUM_CLASSES, pre_nms_topk=80,
                               max_detections=60)
  canvas = (256, 384)  # Multiples of 128: torchvision's anchor strides agree.
  locations = compute_locations(canvas, cfg)
  batch = 3
  outputs = head_outputs(batch, locations.num_locations, NUM_CLASSES, cfg, 7)
  image_hw, orig_hw = image_sizes(batch, canvas, seed=8)
  got = make_postprocess_fn(locations, cfg)(outputs, image_hw, orig_hw)

  from benchmarks import bench_postprocess  # torchvision's side, shared.
  model = bench_postprocess.build_torchvision(cfg)
  # Its own anchor generator for this canvas, checked against our geometry.
  images = detection.image_list.ImageList(
      torch.zeros(batch, 3, *canvas), [tuple(hw) for hw in image_hw.tolist()])
  feats = [torch.zeros(batch, 1, h, w) for h, w in locations.level_sizes]
  anchors = model.anchor_generator(images, feats)
  for a in anchors:
    np.testing.assert_array_equal(
        a.numpy(), bench_postprocess.torchvision_anchors(locations, cfg.strides))
  dets = bench_postprocess.torchvision_postprocess(
      model, jax.tree.map(torch.from_numpy, outputs), locations,
      anchors[0], image_hw, orig_hw)
  want = [{"boxes": d["boxes"].numpy(), "scores": d["scores"].numpy(),
           "classes": d["labels"].numpy()} for d in dets]
  assert_matches(got, want)


@pytest.mark.torch
def test_benchmark_smoke(tmp_path):
  pytest.importorskip("torch")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  out = tmp_path / "bench.json"
  proc = subprocess.run(
      [sys.executable, os.path.join(root, "benchmarks", "bench_postprocess.py"),
       "--smoke", "--json", str(out)],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "XLA_FLAGS": ""})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "speed-up" in proc.stdout
  import json
  result = json.loads(out.read_text())
  assert result["ours_detections"] == result["torchvision_detections"] > 0
