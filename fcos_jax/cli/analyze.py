"""The FCOS paper's own measurements, on any dataset config's split.

  fcos-analyze bpr        --config configs/synthetic_cpu.py [--split train]
  fcos-analyze ambiguity  --config configs/synthetic_cpu.py [--workdir RUN]
  fcos-analyze pr-curves  --workdir RUN [--detections FILE.json]
  fcos-analyze recall     --workdir RUN [--detections FILE.json]
  fcos-analyze centerness --workdir RUN [--image_ids 1000000,1000001]

- bpr: best possible recall (paper Table 1) of FCOS's assignment (FPN
  P3-P7 with size ranges, P4 alone, each with and without centre sampling)
  and of RetinaNet's anchors (IoU >= 0.4, and with low-quality matches).
- ambiguity: the share of positive locations inside two or more boxes,
  and of two or more classes (Table 2); with --workdir, also the share of
  the detector's final detections that come from such locations.
- pr-curves: class-agnostic precision-recall curves at IoU 0.50 / 0.75 /
  0.90 (Figs. 4-6) of a detections JSON (fcos-evaluate's), via pycocotools
  (useCats=0): a PNG and the APs.
- recall: average recall of a detections JSON used as proposals (AR@100 /
  300 / 1000, useCats=0), e.g. a detector's boxes beside an RPN's.
- centerness: predicted and target centre-ness maps of chosen images,
  per level, over the image (Figs. 3 and 8).

The config is --config, or the run's recorded one with --workdir. Boxes
are resized as evaluation resizes them. Results: a printed table and JSON
(and PNGs) in --out (default WORKDIR/analysis).
"""

import math

from absl import app, flags
from ml_collections import config_flags

from fcos_jax.cli import common
from fcos_jax.errors import DataError, MissingFileError

ANALYSES = ("bpr", "ambiguity", "pr-curves", "recall", "centerness")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Path to an ml-collections config file; default: the "
    "run's recorded config (--workdir).", lock_config=True)
flags.DEFINE_string("workdir", None, "A fcos-train run (its checkpoints, "
                    "config and categories.json).")
flags.DEFINE_string("checkpoint", None,
                    "A step number or a checkpoint directory; default: latest.")
flags.DEFINE_string("out", None, "Output folder; default WORKDIR/analysis.")
flags.DEFINE_enum("split", "val", ["train", "val"],
                  "The split bpr, ambiguity and centerness read.")
flags.DEFINE_string("detections", None, "pr-curves / recall: a COCO results "
                    "JSON; default: the latest WORKDIR/eval/detections_step"
                    "N.json.")
flags.DEFINE_string("gt_json", None, "pr-curves / recall: the ground truth; "
                    "default: the config's evaluation split.")
flags.DEFINE_list("image_ids", [], "centerness: image ids; default: the "
                  "split's first four.")
flags.register_validator(
    "image_ids", lambda ids: all(str(i).strip().isdigit() for i in ids),
    "must be image ids (whole numbers) separated by commas, e.g. "
    "--image_ids=1000000,1000001.")
flags.DEFINE_float("min_score", 0.0, "ambiguity: count the detections with "
                   "at least this score.")


def _config():
  if FLAGS.config is not None:
    return FLAGS.config
  if FLAGS.workdir is None:
    raise app.UsageError("Pass --config, or --workdir of a fcos-train run.")
  return common.recorded_config(FLAGS.workdir)


def _out_dir() -> str:
  from fcos_jax import storage
  if FLAGS.out:
    return FLAGS.out
  if FLAGS.workdir:
    from fcos_jax.run import Run
    return Run(FLAGS.workdir).analysis_dir
  raise app.UsageError("Pass --out (or --workdir, to write in "
                       "WORKDIR/analysis).")


def _need_workdir(what: str) -> str:
  if not FLAGS.workdir:
    raise app.UsageError(f"{what} needs --workdir (a fcos-train run with a "
                         "checkpoint).")
  return FLAGS.workdir


def _restore(config):
  """(params, step, the run's categories) of --workdir / --checkpoint."""
  from fcos_jax import runtime
  from fcos_jax.model.config_dict import model_config_from
  from fcos_jax.run import Run
  import jax
  run = Run(_need_workdir("this analysis"))
  return run.restore_params(
      model_config_from(config.model), FLAGS.checkpoint,
      canvas_hw=config.data.canvases[0],
      mesh=runtime.make_mesh(jax.local_device_count()))


def _detections_json() -> str:
  from fcos_jax import storage
  if FLAGS.detections:
    return FLAGS.detections
  from fcos_jax.run import Run
  eval_dir = Run(_need_workdir("Without --detections, this")).eval_dir
  found = sorted(
      (int(p.name[len("detections_step"):-len(".json")]), str(p))
      for p in storage.path(eval_dir).glob("detections_step*.json")
      if p.name[len("detections_step"):-len(".json")].isdigit()) \
      if storage.exists(eval_dir) else []
  if not found:
    raise MissingFileError(
        f"{eval_dir} has no detections_stepN.json: run fcos-evaluate first, "
        "or pass --detections.")
  return found[-1][1]


def _gt_json(config) -> str:
  if FLAGS.gt_json:
    return FLAGS.gt_json
  from fcos_jax.data import sources
  return sources.split_files(config.data, "val")[2]


def _read_results(path: str, gt: str) -> list:
  """The detections of `path`, each checked against the ground truth `gt`
  (pycocotools would stop with an AssertionError or a KeyError)."""
  from fcos_jax import storage
  if not storage.exists(path):
    raise MissingFileError(f"--detections={path}: no such file.")
  results = storage.read_json(path)
  if not isinstance(results, list):
    raise DataError(f"{path}: expected a COCO results list (what fcos-evaluate "
                     f"writes), got a JSON {type(results).__name__}.")
  if not results:
    raise DataError(f"{path}: the detections list is empty: there is no "
                    "curve or recall to measure (the model found nothing "
                    "above its score threshold; lower "
                    "model.inference.score_thresh and evaluate again).")
  image_ids = {im["id"] for im in storage.read_json(gt)["images"]}
  for i, r in enumerate(results):
    box = r.get("bbox") if isinstance(r, dict) else None
    ok = (isinstance(box, list) and len(box) == 4 and all(
        isinstance(v, (int, float)) and math.isfinite(v) for v in box) and
          isinstance(r.get("score"), (int, float)) and "image_id" in r)
    if not ok:
      raise DataError(f"{path}: record {i} ({str(r)[:120]}) is no COCO "
                      "result: expected image_id, bbox [x, y, w, h] of 4 "
                      "finite numbers and a numeric score.")
  unknown = sorted({r["image_id"] for r in results} - image_ids, key=str)
  if unknown:
    raise DataError(
        f"{path}: {len(unknown)} image id(s) of its detections (e.g. "
        f"{unknown[:3]}) are not in the ground truth {gt}: the detections "
        "are of another split. Pass the matching --gt_json.")
  return results


def _check_gt(gt: str) -> None:
  """The ground truth must have images and (non-crowd) boxes: pycocotools
  scores an empty one as -1 (or fails), which reads like a result."""
  from fcos_jax.data.coco_format import read_coco_json
  data, _ = read_coco_json(gt)
  if not data["images"]:
    raise DataError(f"{gt}: the ground truth has no images: nothing to "
                    "measure. Pass --gt_json of a split with images.")
  if not any(not a.get("iscrowd", 0) for a in data["annotations"]):
    raise DataError(f"{gt}: the ground truth has {len(data['images'])} "
                    "image(s) but no (non-crowd) box: precision and recall "
                    "are undefined. Pass --gt_json of an annotated split.")


def run_bpr_ambiguity(config, which: str) -> None:
  from fcos_jax.analysis import runner
  out = _out_dir()
  stats, images = runner.assignment_statistics(
      config, FLAGS.split, with_anchors=which == "bpr")
  record = {"split": FLAGS.split, "images": images, "settings": stats}
  if which == "bpr":
    print(f"Best possible recall on the {FLAGS.split} split ({images} "
          f"images):\n{runner.bpr_table(stats)}", flush=True)
  else:
    print(f"Ambiguous positive locations on the {FLAGS.split} split "
          f"({images} images):\n{runner.ambiguity_table(stats)}", flush=True)
    if FLAGS.workdir:
      params, step, saved = _restore(config)
      det = runner.detection_statistics(config, params, saved, FLAGS.min_score)
      record["detections"] = dict(det, step=step)
      print(f"Final detections (val split, step {step}, score >= "
            f"{FLAGS.min_score:g}): {det['detections']}; from ambiguous "
            f"locations {100 * det['ambiguous_share']:.2f}%, of different "
            f"classes {100 * det['ambiguous_classes_share']:.2f}%.", flush=True)
  path = runner.write_json(out, f"{which}_{FLAGS.split}.json", record)
  print(f"Wrote {path}.", flush=True)


def run_pr_curves(config) -> None:
  from fcos_jax import storage
  from fcos_jax.analysis import pr_curves
  detections, gt = _detections_json(), _gt_json(config)
  _check_gt(gt)
  curves = pr_curves.class_agnostic_curves(gt, _read_results(detections, gt))
  out = _out_dir()
  png = storage.join(out, "pr_curves_class_agnostic.png")
  pr_curves.write_png(curves, png)
  aps = {f"AP{round(100 * iou)}": pr_curves.average_precision(c)
         for iou, c in curves.items()}
  storage.write_json_atomic(storage.join(out, "pr_curves_class_agnostic.json"), {
      "detections": detections, "gt_json": gt, "ap": aps,
      "recall": [round(r / 100, 2) for r in range(101)],
      "precision": {f"{iou:.2f}": c.tolist() for iou, c in curves.items()}})
  print(f"Class-agnostic PR curves of {detections}:\n" + "\n".join(
      f"  IoU {iou:.2f}: AP {aps[f'AP{round(100 * iou)}']:.3f}"
      for iou in curves) + f"\nWrote {png}.", flush=True)


def run_recall(config) -> None:
  from fcos_jax import storage
  from fcos_jax.evaluation import proposal_eval
  detections, gt = _detections_json(), _gt_json(config)
  _check_gt(gt)
  results = _read_results(detections, gt)
  image_ids = [im["id"] for im in storage.read_json(gt)["images"]]
  metrics = proposal_eval.proposal_evaluate(gt, results, image_ids)
  path = storage.join(_out_dir(), "recall.json")
  per_image = len(results) / max(len(image_ids), 1)
  storage.write_json_atomic(path, dict(
      metrics, proposals_per_image=per_image, num_images=len(image_ids),
      detections=detections, gt_json=gt))
  print(f"Average recall of {detections} as proposals ({per_image:.1f} per "
        f"image on {len(image_ids)} images):\n"
        f"{proposal_eval.format_proposal_table(metrics)}\nWrote {path}.",
        flush=True)


def run_centerness(config) -> None:
  from fcos_jax.analysis import centerness_maps
  from fcos_jax.data import sources
  from fcos_jax.model.config_dict import model_config_from
  params, _, saved = _restore(config)
  table, _ = sources.load_split(config.data, FLAGS.split, saved,
                                "the run's categories.json")
  ids = [int(i) for i in FLAGS.image_ids] or [int(i) for i in
                                              table.image_ids[:4]]
  paths = centerness_maps.draw_centerness(
      params, model_config_from(config.model), table, config.data, ids,
      _out_dir())
  print("Centre-ness maps (top: predicted, bottom: target; one tile per "
        "level):\n" + "\n".join(f"  {p}" for p in paths), flush=True)


def main(argv):
  if len(argv) != 2 or argv[1] not in ANALYSES:
    raise app.UsageError(f"Give one analysis: {' | '.join(ANALYSES)} "
                         f"(got {argv[1:]}).")
  config = _config()
  common.setup(config, needs=("eval", "model"))
  which = argv[1]
  if which in ("bpr", "ambiguity"):
    run_bpr_ambiguity(config, which)
  elif which == "pr-curves":
    run_pr_curves(config)
  elif which == "recall":
    run_recall(config)
  else:
    run_centerness(config)


def run():
  """The console script's entry point (fcos-analyze)."""
  common.run(main, overrides_change_recorded=True)


if __name__ == "__main__":
  run()
