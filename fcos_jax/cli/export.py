"""fcos-export: a run's checkpoint for serving (see fcos_jax/export/__init__.py).

  fcos-export --workdir runs/r50_1x --out /tmp/fcos_export
  fcos-export --workdir /tmp/fcos_synthetic --out /tmp/exp \
      --formats=stablehlo --dtypes=float32 --platforms=cpu,cuda,tpu

For each canvas of the run's data.canvases (one per orientation) and each
dtype, writes OUT/stablehlo/<H>x<W>_<dtype>.jax_export,
OUT/saved_model/<H>x<W>_<dtype>/ and (float32) OUT/onnx/<H>x<W>_float32.onnx;
for each dtype OUT/saved_model/images_<dtype>/ (one image of any size, the
resize inside); and OUT/manifest.json: the inputs and
outputs, the resize rule that makes the inputs (short side min_size, long
side at most max_size, top-left on the canvas), the categories in label
order, the checkpoint step and the files.
"""

import dataclasses
import os

from absl import app, flags, logging

from fcos_jax.cli import common
from fcos_jax.errors import UserError

FLAGS = flags.FLAGS
common.define_trained_run_flags("Run directory (fcos-train or fcos-convert).")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_list("formats", ["stablehlo", "saved_model", "onnx"],
                  "stablehlo, saved_model, onnx (float32 only).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
flags.DEFINE_list("platforms", ["cpu", "cuda", "tpu"],
                  "Platforms the StableHLO is lowered for (SavedModel too).")
flags.DEFINE_integer("batch", 1, "Batch size of the per-canvas SavedModel "
                     "and ONNX models (the StableHLO takes any batch).")
flags.DEFINE_bool("overwrite", False,
                  "Write into an --out folder that already holds files (those "
                  "of the same names are replaced, others kept).")
flags.mark_flags_as_required(["workdir", "out"])

FORMATS = ("stablehlo", "saved_model", "onnx")
PLATFORMS = ("cpu", "cuda", "tpu")  # jax.export's names (not "gpu").
DTYPES = ("float32", "bfloat16")


def _one_of(valid):
  return lambda values: bool(values) and all(v in valid for v in values)


flags.register_validator(
    "platforms", _one_of(PLATFORMS),
    f"must be a comma-separated list of {', '.join(PLATFORMS)} (jax.export's "
    "names: an NVIDIA GPU is cuda, not gpu).")
flags.register_validator(
    "formats", _one_of(FORMATS),
    f"must be a comma-separated list of {', '.join(FORMATS)}.")
flags.register_validator(
    "dtypes", _one_of(DTYPES),
    f"must be a comma-separated list of {', '.join(DTYPES)}.")
flags.register_validator("batch", lambda v: v >= 1, "must be at least 1.")


def export_all(detector, out: str, *, formats, dtypes, platforms, batch,
               min_size, max_size) -> dict:
  """Writes every (canvas, dtype, format) artifact; returns the manifest."""
  from fcos_jax import storage  # pylint: disable=import-outside-toplevel
  from fcos_jax.export import onnx_export, saved_model, serving, stablehlo  # pylint: disable=import-outside-toplevel
  bad = sorted(set(formats) - set(FORMATS))
  if bad:
    raise UserError(f"--formats: unknown {bad}; choose from {FORMATS}.")
  if "onnx" in formats and "float32" in dtypes:
    onnx_export.require()  # Before the first artifact is written.
  params = serving.as_numpy_params(detector.params)
  files = []
  per_canvas = sum(("stablehlo" in formats, "saved_model" in formats))
  total = (len(detector.canvases) * (len(dtypes) * per_canvas + (
      "onnx" in formats and "float32" in dtypes)) +
           len(dtypes) * ("saved_model" in formats))
  from fcos_jax.progress import bar  # pylint: disable=import-outside-toplevel
  progress = bar(total, "export", unit=" files")

  def wrote(path):
    logging.info("Wrote %s", path)
    progress.update(1)

  for canvas in detector.canvases:
    for dtype in dtypes:
      cfg = detector.cfg.replace(dtype=dtype)
      name = f"{canvas[0]}x{canvas[1]}_{dtype}"
      if "stablehlo" in formats:
        path = storage.join(out, "stablehlo", name + ".jax_export")
        stablehlo.save(stablehlo.export(cfg, params, canvas,
                                        platforms=platforms), path)
        files.append({"format": "stablehlo", "canvas": list(canvas),
                      "dtype": dtype, "batch": "any",
                      "platforms": list(platforms), "path": path})
        wrote(path)
      if "saved_model" in formats:
        path = storage.join(out, "saved_model", name)
        saved_model.export(cfg, params, canvas, path, batch=batch,
                           platforms=platforms)
        files.append({"format": "saved_model", "canvas": list(canvas),
                      "dtype": dtype, "batch": batch,
                      "platforms": list(platforms), "path": path,
                      "signature": "serving_default"})
        wrote(path)
      if "onnx" in formats and dtype == "float32":
        path = storage.join(out, "onnx", name + ".onnx")
        onnx_export.export(cfg, params, canvas, path, batch=batch)
        files.append({"format": "onnx", "canvas": list(canvas),
                      "dtype": dtype, "batch": batch, "path": path,
                      "nms": "ONNX NonMaxSuppression"})
        wrote(path)
      elif "onnx" in formats:
        logging.info("ONNX is exported in float32 only (ONNX Runtime's CPU "
                     "kernels have no bfloat16 convolutions); skipped %s.",
                     name)
  if "saved_model" in formats:
    canvases = detector.canvases
    for dtype in dtypes:
      path = storage.join(out, "saved_model", f"images_{dtype}")
      saved_model.export_images(detector.cfg.replace(dtype=dtype), params,
                                canvases, path, min_size=min_size,
                                max_size=max_size, platforms=platforms)
      files.append({"format": "saved_model", "canvas": "any image size",
                    "canvases": [list(c) for c in canvases], "dtype": dtype,
                    "batch": "one image", "platforms": list(platforms),
                    "path": path, "signature": "serving_default",
                    "inputs": {"image": "uint8 [h, w, 3] RGB, any size"}})
      wrote(path)
  progress.close()
  manifest = {
      "inputs": {"images": "uint8 [B, H, W, 3] RGB canvas, resized image "
                           "at the top-left, zeros elsewhere",
                 "image_hw": "int32 [B, 2] (h, w) of the resized image",
                 "orig_hw": "int32 [B, 2] (h, w) of the original image"},
      "outputs": {"boxes": "float32 [B, K, 4] x0, y0, x1, y1 original pixels",
                  "scores": "float32 [B, K]", "classes": "int32 [B, K] label",
                  "valid": "bool [B, K]"},
      "max_detections": detector.cfg.inference.max_detections,
      "score_thresh": detector.cfg.inference.score_thresh,
      "resize": {"min_size": min_size, "max_size": max_size,
                 "canvases": [list(c) for c in
                              detector.canvases],
                 "rule": "short side to min_size unless the long side would "
                         "pass max_size (then long side = max_size); bilinear "
                         "(antialiased when shrinking); the smallest canvas "
                         "that holds the result"},
      "categories": detector.categories,
      "step": detector.step,
      "model": dataclasses.asdict(detector.cfg),
      "files": files,
  }
  storage.write_json_atomic(storage.join(out, "manifest.json"), manifest,
                            indent=1)
  return manifest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from fcos_jax.inference import outputs  # pylint: disable=import-outside-toplevel
  outputs.prepare_out_dir(FLAGS.out, overwrite=FLAGS.overwrite, make=False)
  if "onnx" in FLAGS.formats and "float32" in FLAGS.dtypes:
    from fcos_jax.export import onnx_export  # pylint: disable=import-outside-toplevel
    onnx_export.require()  # Before --out is made or a model read.
  config = FLAGS.config or common.recorded_config(FLAGS.workdir)
  common.setup(config, needs=("eval", "model"))  # Before --out is made.
  outputs.prepare_out_dir(FLAGS.out, overwrite=FLAGS.overwrite)
  from fcos_jax.inference.detector import Detector  # pylint: disable=import-outside-toplevel
  det = Detector.from_workdir(FLAGS.workdir, FLAGS.checkpoint, config=config)
  ms = config.data.min_size
  min_size = int(max(ms)) if isinstance(ms, (list, tuple)) else int(ms)
  manifest = export_all(det, FLAGS.out, formats=FLAGS.formats,
                        dtypes=FLAGS.dtypes, platforms=FLAGS.platforms,
                        batch=FLAGS.batch, min_size=min_size,
                        max_size=int(config.data.max_size))
  print(f"Exported step {det.step}: {len(manifest['files'])} artifacts and "
        f"{os.path.join(FLAGS.out, 'manifest.json')}", flush=True)


def run():
  """The console script's entry point (fcos-export)."""
  common.run(main, overrides_change_recorded=True)


if __name__ == "__main__":
  run()
