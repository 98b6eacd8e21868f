"""Post-processing speed: our jitted `postprocess` against torchvision's.

Both get the same head outputs (torchvision preset: threshold 0.2 on
sqrt(prob * ctr), top 1000 per level, NMS 0.6, 100 detections) for B images
on one canvas, C classes. torchvision runs `FCOS.postprocess_detections` and
`transform.postprocess` (per-image Python loops, as in its forward); ours runs
`make_postprocess_fn` (decode, clip, NMS and rescale included). Times are
taken after compilation/warm-up, with `block_until_ready`.

  python benchmarks/bench_postprocess.py            # 8 x 800x1344, 80 classes
  python benchmarks/bench_postprocess.py --smoke    # tiny, for the test
  python benchmarks/bench_postprocess.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import timing  # noqa: E402
from fcos_jax.model import config as config_lib  # noqa: E402
from fcos_jax.core.locations import compute_locations  # noqa: E402
from fcos_jax.core.postprocess import make_postprocess_fn  # noqa: E402
from fcos_jax.model.outputs import HeadOutputs  # noqa: E402


def realistic_outputs(batch, num_locations, num_classes, seed=0,
                      object_frac=0.02, classes_per_object=5):
  """Head outputs like a trained model's: background logits near -7, and on
  `object_frac` of the locations a few classes with logits in [-3, 4]
  (a few thousand candidates per image above either threshold).

  Returns cls_logits [B, P, C], box_regression [B, P, 4] (stride units),
  centerness [B, P], all float32.
  """
  rng = np.random.default_rng(seed)
  cls = (rng.standard_normal((batch, num_locations, num_classes),
                             np.float32) - 7.0)
  n_obj = int(object_frac * num_locations)
  for b in range(batch):
    loc = rng.choice(num_locations, n_obj, replace=False)
    for _ in range(classes_per_object):
      cls[b, loc, rng.integers(0, num_classes, n_obj)] = rng.uniform(-3, 4, n_obj)
  reg = rng.uniform(0.2, 6.0, (batch, num_locations, 4)).astype(np.float32)
  ctr = rng.normal(0.0, 1.5, (batch, num_locations)).astype(np.float32)
  return HeadOutputs(cls_logits=cls, box_regression=reg, centerness=ctr)


def torchvision_anchors(locations, strides):
  """torchvision's anchors for our levels: boxes of side s centred on the
  locations (the torchvision preset puts them at (j*s, i*s)). [P, 4]."""
  s = np.concatenate([np.full(h * w, st, np.float32)
                      for (h, w), st in zip(locations.level_sizes, strides)])
  half = s[:, None] / 2
  return np.concatenate([locations.points - half, locations.points + half], 1)


def build_torchvision(cfg):
  """torchvision's FCOS whose post-processing we call. Its weights play no
  part there, so a stub backbone (32 channels) replaces the slow ResNet-50."""
  import torch
  from torchvision.models.detection import FCOS
  backbone = torch.nn.Identity()
  backbone.out_channels = 32
  return FCOS(backbone, num_classes=cfg.num_classes,
              score_thresh=cfg.inference.score_thresh, nms_thresh=cfg.inference.nms_iou,
              detections_per_img=cfg.inference.max_detections,
              topk_candidates=cfg.inference.pre_nms_topk).eval()


def torchvision_postprocess(model, outputs, locations, anchors, image_hw,
                            orig_hw):
  """torchvision's post-processing on our head outputs (torch tensors)."""
  import torch
  sizes = [h * w for h, w in locations.level_sizes]
  head = {"cls_logits": outputs.cls_logits,
          "bbox_regression": outputs.box_regression,
          "bbox_ctrness": outputs.centerness[..., None]}
  split = {k: list(v.split(sizes, dim=1)) for k, v in head.items()}
  batch = outputs.cls_logits.shape[0]
  per_level_anchors = list(anchors.split(sizes, dim=0))
  image_sizes = [tuple(int(x) for x in hw) for hw in image_hw]
  orig_sizes = [tuple(int(x) for x in hw) for hw in orig_hw]
  with torch.no_grad():
    dets = model.postprocess_detections(
        split, [per_level_anchors] * batch, image_sizes)
    return model.transform.postprocess(dets, image_sizes, orig_sizes)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--height", type=int, default=800)
  parser.add_argument("--width", type=int, default=1344)
  parser.add_argument("--classes", type=int, default=80)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--preset", default="torchvision",
                      choices=sorted(config_lib.PRESETS),
                      help="Our config; torchvision always runs its own rule.")
  parser.add_argument("--smoke", action="store_true",
                      help="2 images of 256x384, 5 classes, 2 repeats.")
  parser.add_argument("--json", help="Also write the results to this path.")
  args = parser.parse_args(argv)
  if args.smoke:
    args.batch, args.height, args.width = 2, 256, 384
    args.classes, args.repeats = 5, 2

  import torch
  cfg = config_lib.PRESETS[args.preset](num_classes=args.classes)
  tv_cfg = config_lib.torchvision(num_classes=args.classes)
  canvas = (args.height, args.width)
  locations = compute_locations(canvas, cfg)
  outputs = realistic_outputs(args.batch, locations.num_locations, args.classes)
  image_hw = np.tile(np.array(canvas, np.int32), (args.batch, 1))
  image_hw[::2] = (args.height - 16, args.width - 40)  # Some padding.
  orig_hw = (image_hw * 0.75).astype(np.int32)

  # Ours.
  fn = make_postprocess_fn(locations, cfg)
  dev_outputs = jax.device_put(outputs)
  dev_image_hw, dev_orig_hw = jax.device_put((image_hw, orig_hw))
  ours = lambda: jax.block_until_ready(fn(dev_outputs, dev_image_hw,
                                          dev_orig_hw))

  # torchvision, on its own (j*s) anchors and rule.
  tv_locations = compute_locations(canvas, tv_cfg)
  model = build_torchvision(tv_cfg)
  torch_outputs = jax.tree.map(torch.from_numpy, outputs)
  anchors = torch.from_numpy(torchvision_anchors(tv_locations, tv_cfg.strides))
  theirs = lambda: torchvision_postprocess(model, torch_outputs, tv_locations,
                                           anchors, image_hw, orig_hw)

  # One warm-up each (compilation for jax), then they take turns.
  timed = timing.time_interleaved({"ours": ours, "torchvision": theirs},
                                  args.repeats, warmup=1)
  ours_t = timed["ours"]["s"]["values"]
  tv_t = timed["torchvision"]["s"]["values"]
  ours_dets = int(np.asarray(ours()["valid"]).sum())
  tv_dets = sum(len(d["boxes"]) for d in theirs())

  rows = {"ours (jax jit)": ours_t, "torchvision": tv_t}
  print(f"post-processing of {args.batch} images {args.height}x{args.width}, "
        f"{args.classes} classes, our preset {args.preset!r}, "
        f"{args.repeats} repeats, {jax.devices()[0].device_kind}, "
        f"torch threads {torch.get_num_threads()}")
  print(f"{'':16s} {'min s':>8s} {'median s':>9s} {'max s':>8s} {'dets':>6s}")
  for (name, t), dets in zip(rows.items(), (ours_dets, tv_dets)):
    print(f"{name:16s} {min(t):8.4f} {statistics.median(t):9.4f} "
          f"{max(t):8.4f} {dets:6d}")
  ratio = statistics.median(tv_t) / statistics.median(ours_t)
  print(f"speed-up (torchvision median / ours median): {ratio:.2f}x")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "ours_s": ours_t, "torchvision_s": tv_t,
                 "ours_detections": ours_dets, "torchvision_detections": tv_dets,
                 "speedup": ratio}, f, indent=1)
  return ratio


if __name__ == "__main__":
  main()
