"""Inference over the evaluation split on all devices and hosts, then COCO AP.

Every host runs the same number of steps (the eval pipeline pads with
`example_valid=False` examples); detections are gathered to every host and
the chief (process 0) runs pycocotools and writes the files.
"""

from __future__ import annotations

import functools
import io
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from PIL import Image

from fcos_jax import errors, runtime, storage
from fcos_jax.progress import bar
from fcos_jax.data import categories, global_batch, pipeline, sources
from fcos_jax.evaluation import coco_eval, pictures, proposal_eval
from fcos_jax.core import detect
from fcos_jax.inference import coco_results, images, tta
from fcos_jax.inference.predictor import Predictor
from fcos_jax.run import Run
from fcos_jax.model.config_dict import model_config_from


def predict(config, params, mesh, categories: list[dict] | None = None,
            categories_from: str | None = None):
  """Detections for the whole evaluation split, as NumPy arrays on every host.

  categories: those the model was trained on (the split must have them;
  default: the training split's). Returns (detections, the split's
  DatasetInfo); detections: image_id [N], boxes [N, K, 4] (original
  pixels), scores [N, K], classes [N, K], valid [N, K]; padding removed.
  """
  cfg = model_config_from(config.model)
  if config.eval_batch_size % jax.device_count():
    raise errors.ConfigError(
        f"config.eval_batch_size={config.eval_batch_size} is not divisible by "
        f"the {jax.device_count()} devices.")
  settings = tta.TTASettings.from_config(config)
  if settings is not None:
    return _predict_tta(config, cfg, params, mesh, settings, categories,
                        categories_from)
  ds = pipeline.build_eval_dataset(
      config.data, process_batch_size=config.eval_batch_size // jax.process_count(),
      process_index=jax.process_index(), process_count=jax.process_count(),
      categories=categories, categories_from=categories_from)
  rep, data = runtime.replicated(mesh), runtime.batch_sharded(mesh)
  step_fn = jax.jit(functools.partial(detect.eval_step, cfg=cfg),
                    in_shardings=(rep, data), out_shardings=data)
  chunks = []
  progress = None
  for i, local in enumerate(ds):
    batch = global_batch.to_global_batch(local, mesh)
    if i == 0:  # The bar after the compile's own log lines.
      runtime.compile_everywhere(step_fn, params, batch, name="eval_step")
      progress = bar(ds.num_steps, "evaluate", unit=" batches",
                     enabled=jax.process_index() == 0)
    dets = step_fn(params, batch)
    dets["example_valid"] = batch["example_valid"]
    chunks.append(multihost_utils.process_allgather(dets, tiled=True))
    progress.update(1)
  if progress is not None:
    progress.close()
  out = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  keep = out.pop("example_valid").astype(bool)
  return {k: v[keep] for k, v in out.items()}, ds.info


def _predict_tta(config, cfg, params, mesh, settings, categories,
                 categories_from):
  """`predict` with test-time augmentation (config.tta): the split's image
  files through `inference.tta` (the same decode and resize as the eval
  pipeline for the first pass), one process."""
  if jax.process_count() > 1:
    raise errors.ConfigError(
        "config.tta.enabled: evaluation with test-time augmentation runs in "
        f"one process; this job has {jax.process_count()}.")
  table, info = sources.load_split(config.data, "val", categories,
                                   categories_from)
  resizer = images.Resizer(config.data.min_size, config.data.max_size,
                           config.data.canvases)
  predictor = Predictor(cfg, params, resizer,
                        batch_size=config.eval_batch_size, mesh=mesh)
  runner = tta.TTARunner(predictor, settings)
  logging.info("Evaluation with test-time augmentation: %d passes (scales "
               "%s besides the run's, flip %s).", len(runner.passes),
               settings.scales, settings.flip)
  k = cfg.inference.max_detections
  n = len(table)
  out = {"image_id": table.image_ids.astype(np.int64),
         "boxes": np.zeros((n, k, 4), np.float32),
         "scores": np.zeros((n, k), np.float32),
         "classes": np.zeros((n, k), np.int32),
         "valid": np.zeros((n, k), bool)}
  bs = predictor.batch_size
  progress = bar(n, "evaluate with TTA")
  for start in range(0, n, bs):
    # COCO's boxes are in stored pixels: no EXIF rotation, as the pipeline.
    arrays = [images.read_image(str(p), exif=False)
              for p in table.paths[start:start + bs]]
    for i, r in enumerate(runner(arrays)):
      m = len(r["scores"])
      out["boxes"][start + i, :m] = r["boxes"]
      out["scores"][start + i, :m] = r["scores"]
      out["classes"][start + i, :m] = r["labels"]
      out["valid"][start + i, :m] = True
    progress.update(len(arrays))
  progress.close()
  return out, info


def _pictures(config, ev, dets, expected_categories, out_dir, step, writer):
  """PR curves (PNG in out_dir, and TensorBoard) and drawn examples."""
  if ev is None:  # No detections: nothing to draw.
    return
  precision = pictures.pr_curves(ev)
  curves = pictures.plot_pr_curves(
      precision, title=f"COCO precision-recall, step {step}")
  png = io.BytesIO()
  Image.fromarray(curves).save(png, format="PNG")
  storage.write_bytes_atomic(storage.join(out_dir, f"pr_curves_step{step}.png"),
                             png.getvalue())
  if writer is None:
    return
  _, image_dir, _ = sources.split_files(config.data, "val")
  names = [c["name"] for c in expected_categories]
  examples = pictures.drawn_examples(ev.cocoGt.dataset, image_dir, dets, names)
  images = {"eval/pr_curves": curves[None]}
  images.update({f"eval/example_{i}": e[None] for i, e in enumerate(examples)})
  writer.write_images(step, images)
  num_gt = sum(1 for a in ev.cocoGt.dataset["annotations"]
               if not a.get("iscrowd", 0))
  writer.write_summaries(step, *pictures.pr_curve_summaries(precision, num_gt))


def evaluate_params(config, params, mesh, workdir: str, step: int,
                    expected_categories, writer=None,
                    out_dir: str | None = None) -> dict:
  """COCO metrics of `params` on the evaluation split; files in workdir/eval
  (detections, metrics, and the PR curves at IoU 0.5/0.75 as a PNG). A
  class-agnostic model (`model.class_agnostic`, the `rpn` preset) gets the
  proposal metrics instead (`proposal_eval.PROPOSAL_METRIC_NAMES`).

  writer: a clu metric writer that also gets the PR curves and a few
  validation images with ground truth and detections drawn (TensorBoard).
  expected_categories: the categories the model was trained on ([{"id",
  "name"}] in label order, or the training split's DatasetInfo); the
  evaluation split must list the same ones. out_dir: where the files go
  (default: workdir/eval, training's own names).
  """
  # A class-agnostic model (FCOS as an RPN) is scored as proposals: AR at
  # 100 / 300 / 1000 boxes per image, useCats=0 (proposal_eval.py).
  proposals = model_config_from(config.model).class_agnostic
  if not isinstance(expected_categories, list):
    expected_categories = categories.as_records(expected_categories)
  t0 = time.time()
  dets, info = predict(
      config, params, mesh, expected_categories, categories_from="the "
      f"categories the model was trained on ({Run(workdir).categories_file})")
  t_pred = time.time() - t0
  metrics = {}
  if jax.process_index() == 0:
    label_to_id = [int(c["id"]) for c in expected_categories]
    results = coco_results.detections_to_coco(dets, label_to_id)
    out_dir = out_dir or Run(workdir).eval_dir
    storage.write_json_atomic(
        storage.join(out_dir, f"detections_step{step}.json"), results)
    if proposals:  # FCOS as an RPN: average recall, class-agnostic.
      metrics = proposal_eval.proposal_evaluate(info.gt_json, results,
                                                dets["image_id"])
      table, what = proposal_eval.format_proposal_table(metrics), "proposal"
    else:
      metrics, ev = coco_eval.coco_evaluate(
          info.gt_json, results, dets["image_id"], return_eval=True,
          # Records older than the field lack it.
          backend=config.get("eval_backend", "pycocotools"))
      table, what = coco_eval.format_table(metrics), "bbox"
    storage.write_json_atomic(
        storage.join(out_dir, f"metrics_step{step}.json"),
        dict(metrics, step=step, num_images=len(dets["image_id"])))
    if not proposals:
      _pictures(config, ev, dets, expected_categories, out_dir, step, writer)
    print(f"COCO {what} evaluation at step {step} on {len(dets['image_id'])} "
          f"images ({t_pred:.1f} s inference, {time.time() - t0 - t_pred:.1f} s "
          f"COCOeval):\n{table}", flush=True)
  # Every host returns the chief's numbers, so callers on any host agree.
  names = (proposal_eval.PROPOSAL_METRIC_NAMES if proposals
           else coco_eval.METRIC_NAMES)
  values = np.array([metrics.get(k, 0.0) for k in names])
  values = multihost_utils.broadcast_one_to_all(values)
  return dict(zip(names, map(float, values)))
