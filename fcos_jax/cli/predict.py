"""Run a trained (or converted) FCOS on image files.

  fcos-predict --workdir /tmp/fcos_synthetic --images 'photos/*.jpg' --out /tmp/pred
  fcos-predict --workdir runs/r50_1x --checkpoint 90000 --images photos/ \
      --out /tmp/pred --draw --heatmaps --score_thresh=0.3
  fcos-predict --torchvision fcos_resnet50_fpn_coco-99b0c9b7.pth \
      --images photo.jpg --out /tmp/pred --draw

--images is a file, a directory (its image files) or a glob (`**` across
folders), local or a URL (gs://...); JPEG (grayscale and CMYK too), PNG,
BMP, GIF. --out must be new or empty unless --overwrite. Writes
OUT/detections.json (COCO results format: image_id, category_id, bbox
[x, y, w, h], score, plus category_name and file_name; image_id is the
file's position in the sorted list), OUT/images.json (per input: id,
file_name, detections, its outputs or the error that skipped it), and with
--draw OUT/draw/<name>.png (boxes, class names, scores), with --heatmaps
OUT/heatmaps/<name>.png (each FPN level's best class score x centerness);
<name> is the input's stem, numbered where another input has it.

The images are resized by the run's rule (data.min_size / max_size, the
largest of a multi-scale range) onto the smallest of data.canvases that
holds them, with the evaluation pipeline's decoder and resize, so the
validation images get exactly fcos-evaluate's detections. EXIF orientation
is applied (photos come out upright; --noexif turns it off, as COCO
evaluation does). A file that cannot be read, decoded or put on a canvas
is named and skipped, and the exit code is then 1; an empty input is an
error. --tta=cheap|official
runs test-time augmentation (passes merged as the official FCOS; no
--heatmaps then).
"""

import math
import sys
import time

from absl import app, flags, logging

from fcos_jax.cli import common

FLAGS = flags.FLAGS
common.define_trained_run_flags(
    "Run directory or URL (fcos-train or fcos-convert).")
flags.DEFINE_string("torchvision", None,
                    "Instead of --workdir: torchvision's fcos_resnet50_fpn "
                    "COCO weights (.pth, needs torch; or .npz).")
flags.DEFINE_string("images", None, "An image file, a directory or a glob.")
flags.DEFINE_string("out", None, "Output directory (or URL).")
flags.DEFINE_bool("draw", False, "Write OUT/draw/<name>.png with the boxes.")
flags.DEFINE_bool("heatmaps", False,
                  "Write OUT/heatmaps/<name>.png, per-level score maps.")
flags.DEFINE_float("score_thresh", None,
                   "Candidate score threshold (model.inference.score_thresh; on the "
                   "class probability, or on sqrt(prob * ctr) for the "
                   "torchvision preset); default: the config's.")
flags.DEFINE_float("draw_min_score", None,
                   "Boxes below this score are left out of the pictures "
                   "(default 0.5: fcos_jax.inference.draw.MIN_SCORE).")
flags.DEFINE_float("draw_duplicate_iou", 0.7,
                   "A box whose IoU with a better-scoring drawn box (any "
                   "class) is this or more is left out of the pictures: one "
                   "label per object (detections.json keeps every box); 1.01 "
                   "draws all.")
flags.DEFINE_integer("batch_size", None,
                     "Images per device call; default: eval_batch_size.")
flags.DEFINE_bool("exif", True, "Apply the EXIF orientation of photos.")
flags.DEFINE_integer("workers", 4, "Threads that read and resize images.")
flags.DEFINE_bool("overwrite", False,
                  "Write into an --out folder that already holds files (those "
                  "of the same names are replaced, others kept).")
flags.DEFINE_enum("tta", None, ["none", "cheap", "official"],
                  "Test-time augmentation (--workdir runs): 'cheap' (the "
                  "run's scale and 1.25x, flipped), 'official' (FCOS's "
                  "400..1200 by 100, max 2000, flipped) or 'none'; default: "
                  "the config's tta fields (off).")
flags.mark_flags_as_required(["images", "out"])
flags.register_validator(
    "batch_size", lambda v: v is None or v >= 1,
    "must be a whole number of images per device call, at least 1 (or left "
    "out: the config's eval_batch_size).")
flags.register_validator(
    "score_thresh", lambda v: v is None or (math.isfinite(v) and 0 <= v <= 1),
    "must be a number in [0, 1] (a score threshold), e.g. 0.05.")
flags.register_validator(
    "draw_min_score", lambda v: v is None or (math.isfinite(v) and 0 <= v <= 1),
    "must be a number in [0, 1], e.g. 0.3.")
flags.register_validator(
    "draw_duplicate_iou", lambda v: math.isfinite(v) and 0 < v,
    "must be a positive IoU, e.g. 0.7 (above 1 draws every box).")
flags.register_validator("workers", lambda v: v >= 1,
                         "must be at least 1 (reading threads).")


class _Progress:
  """The shared progress bar (fcos_jax.progress), with the skipped count."""

  def __init__(self, total: int):
    from fcos_jax.progress import bar  # pylint: disable=import-outside-toplevel
    self.bar = bar(total, "predict")
    self.start = time.perf_counter()
    self.done = self.skipped = 0

  def update(self, ok: bool):
    self.done += 1
    self.skipped += not ok
    if not ok:
      self.bar.set_postfix(skipped=self.skipped, refresh=False)
    self.bar.update(1)
    if self.done == self.bar.total:
      self.bar.close()

  def rate(self) -> float:
    return self.done / max(time.perf_counter() - self.start, 1e-9)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bool(FLAGS.workdir) == bool(FLAGS.torchvision):
    raise app.UsageError("Give one of --workdir and --torchvision.")
  from fcos_jax.inference import images, outputs  # pylint: disable=import-outside-toplevel
  # Everything that needs no model first: a bad --out, --images or config
  # costs no restore, and a bad config is refused before --out is made.
  paths = images.list_images(FLAGS.images)
  outputs.prepare_out_dir(FLAGS.out, overwrite=FLAGS.overwrite, make=False)
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = FLAGS.config or (common.recorded_config(FLAGS.workdir)
                            if FLAGS.workdir else ml_collections.ConfigDict(
                                {"compilation_cache_dir": ""}))
  common.setup(config, needs=("eval", "model"))
  if FLAGS.tta and FLAGS.tta != "none" and not FLAGS.workdir:
    raise app.UsageError("--tta needs --workdir (a run's resize rule).")
  if FLAGS.tta and FLAGS.workdir:
    from fcos_jax.inference import tta  # pylint: disable=import-outside-toplevel
    tta.apply_to_config(config, FLAGS.tta)
  from fcos_jax import storage  # pylint: disable=import-outside-toplevel
  from fcos_jax.inference.detector import Detector  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  if FLAGS.workdir:
    det = Detector.from_workdir(FLAGS.workdir, FLAGS.checkpoint,
                                config=config, score_thresh=FLAGS.score_thresh,
                                batch_size=FLAGS.batch_size)
    logging.info("Restored %s step %s in %.1f s.", FLAGS.workdir, det.step,
                 time.perf_counter() - t0)
  else:
    det = Detector.from_torchvision(FLAGS.torchvision,
                                    score_thresh=FLAGS.score_thresh,
                                    batch_size=FLAGS.batch_size)
  out = FLAGS.out  # Made once the model is there (a bad --checkpoint or
  outputs.prepare_out_dir(out, overwrite=FLAGS.overwrite)  # weights: none).
  progress = _Progress(len(paths))
  result = outputs.predict_to_folder(
      det, paths, out, draw=FLAGS.draw, heatmaps=FLAGS.heatmaps,
      exif=FLAGS.exif, workers=FLAGS.workers,
      draw_min_score=FLAGS.draw_min_score,
      draw_duplicate_iou=FLAGS.draw_duplicate_iou, on_image=progress.update)
  errors, records = result["errors"], result["records"]
  for i in sorted(errors):
    logging.error("Skipped %s", errors[i])
  print(f"predict: {len(paths) - len(errors)} images, {len(records)} "
        f"detections, {progress.rate():.1f} images/s overall (decode + resize"
        f" + model + NMS + files), {len(errors)} skipped; wrote "
        f"{storage.join(out, 'detections.json')} and "
        f"{storage.join(out, 'images.json')}", flush=True)
  if errors:
    print(f"error: {len(errors)} of {len(paths)} file(s) could not be used "
          "and were skipped (listed above and in images.json): " +
          "; ".join(errors[i] for i in sorted(errors)[:5]), file=sys.stderr,
          flush=True)
    sys.exit(1)


def run():
  """The console script's entry point (fcos-predict)."""
  common.run(main, overrides_change_recorded=True)


if __name__ == "__main__":
  run()
