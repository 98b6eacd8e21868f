"""The analyses of `analyze.py` over a whole split: jitted per canvas and
setting, batches sharded over the local devices, sums reduced on the
device and read once per batch; tables printed and JSON written.

One process (the analyses read the whole split themselves).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from fcos_jax import errors, runtime, storage
from fcos_jax.progress import bar
from fcos_jax.analysis import anchors, assignment, detection_ambiguity
from fcos_jax.analysis import split_boxes
from fcos_jax.data import global_batch, pipeline, sources
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import compute_locations

RETINANET = "RetinaNet anchors (9 per location), IoU >= 0.4"
RETINANET_LOW = "RetinaNet anchors, IoU >= 0.4 + low-quality matches"


def _check_batch(batch_size: int) -> None:
  if jax.process_count() > 1:
    raise errors.ConfigError("fcos-analyze runs in one process (it reads the whole "
                             "split itself); start it on one host.")
  if batch_size % jax.local_device_count():
    raise errors.ConfigError(
        f"config.eval_batch_size={batch_size} is not divisible by the "
        f"{jax.local_device_count()} local devices; set "
        "--config.eval_batch_size to a multiple.")


def assignment_statistics(config, split: str, with_anchors: bool = True
                          ) -> tuple[dict, int]:
  """{setting name: Totals.as_dict()} over every image of `split`, for the
  FCOS rules of `assignment.fcos_settings` and RetinaNet's anchors; and the
  number of images."""
  cfg = ModelConfig.from_dict(config.model.to_dict())
  table, _ = sources.load_split(config.data, split)
  batch_size = int(config.eval_batch_size)
  _check_batch(batch_size)
  mesh = runtime.make_mesh(jax.local_device_count())
  sharded = runtime.batch_sharded(mesh)
  settings = assignment.fcos_settings(cfg)
  totals = {name: assignment.Totals() for name in settings}
  if with_anchors:
    totals.update({RETINANET: assignment.Totals(),
                   RETINANET_LOW: assignment.Totals()})

  @functools.lru_cache(maxsize=None)
  def program(canvas_hw, name):
    if name in settings:
      locations = compute_locations(canvas_hw, settings[name])
      fn = functools.partial(assignment.assignment_counts,
                             locations=locations, cfg=settings[name])
    else:
      fn = functools.partial(anchors.anchor_counts,
                             anchors=anchors.retinanet_anchors(canvas_hw),
                             low_quality=name == RETINANET_LOW)
    return jax.jit(fn, in_shardings=(sharded,))

  progress = bar(len(table), f"analyze {split}")
  for canvas_hw, batch in split_boxes.box_batches(table, config.data,
                                                  batch_size):
    arrays = {k: batch[k] for k in ("boxes", "classes", "box_valid",
                                    "is_crowd")}
    arrays = jax.device_put(arrays, sharded)
    counts = {name: program(canvas_hw, name)(arrays) for name in totals}
    for name, c in jax.device_get(counts).items():
      totals[name].add(c)
    progress.update(int(batch["example_valid"].sum()))
  progress.close()
  out = {name: t.as_dict() for name, t in totals.items()}
  for name in (RETINANET, RETINANET_LOW):  # Anchors: recall only.
    if name in out:
      out[name] = {k: out[name][k] for k in ("boxes", "recalled", "bpr")}
  for name, rule in settings.items():  # Another rule (ATSS): no ambiguity.
    if rule.assign.name != "fcos":
      out[name] = {k: out[name][k]
                   for k in ("boxes", "recalled", "bpr", "positive")}
  return out, len(table)


def detection_statistics(config, params, expected_categories,
                         min_score: float = 0.0) -> dict:
  """Share of a detector's final detections (evaluation split, the
  evaluation pipeline) whose location is ambiguous."""
  cfg = ModelConfig.from_dict(config.model.to_dict())
  batch_size = int(config.eval_batch_size)
  _check_batch(batch_size)
  mesh = runtime.make_mesh(jax.local_device_count())
  rep, data = runtime.replicated(mesh), runtime.batch_sharded(mesh)
  ds = pipeline.build_eval_dataset(
      config.data, process_batch_size=batch_size, process_index=0,
      process_count=1, categories=expected_categories,
      categories_from="the run's categories.json")
  fn = jax.jit(functools.partial(detection_ambiguity.detection_counts, cfg=cfg,
                                 min_score=float(min_score)),
               in_shardings=(rep, data))
  totals = {"detections": 0, "ambiguous": 0, "ambiguous_classes": 0}
  images = len(sources.load_split(config.data, "val", expected_categories)[0])
  progress = bar(images, "analyze detections")
  for local in ds:
    batch = global_batch.to_global_batch(local, mesh)
    for k, v in jax.device_get(fn(params, batch)).items():
      totals[k] += int(v)
    progress.update(int(np.sum(local["example_valid"])))
  progress.close()
  n = totals["detections"]
  return dict(totals, min_score=float(min_score),
              ambiguous_share=totals["ambiguous"] / n if n else 0.0,
              ambiguous_classes_share=totals["ambiguous_classes"] / n
              if n else 0.0)


def bpr_table(stats: dict) -> str:
  """Paper Table 1's analogue: best possible recall of each rule."""
  width = max(len(n) for n in stats)
  lines = [f"{'assignment':<{width}}  {'boxes':>8}  {'recalled':>8}  BPR",
           "-" * (width + 30)]
  for name, s in stats.items():
    lines.append(f"{name:<{width}}  {s['boxes']:>8d}  {s['recalled']:>8d}  "
                 f"{100 * s['bpr']:6.2f}%")
  return "\n".join(lines)


def ambiguity_table(stats: dict) -> str:
  """Paper Table 2's analogue: ambiguous shares of the positive locations."""
  rows = {n: s for n, s in stats.items() if "ambiguous_share" in s}
  width = max(len(n) for n in rows)
  lines = [f"{'assignment':<{width}}  {'positive':>9}  {'ambiguous':>9}  "
           f"{'amb. %':>7}  {'diff. classes %':>15}", "-" * (width + 49)]
  for name, s in rows.items():
    lines.append(
        f"{name:<{width}}  {s['positive']:>9d}  {s['ambiguous']:>9d}  "
        f"{100 * s['ambiguous_share']:6.2f}%  "
        f"{100 * s['ambiguous_classes_share']:14.2f}%")
  return "\n".join(lines)


def write_json(out_dir: str, name: str, value) -> str:
  path = storage.join(out_dir, name)
  storage.write_json_atomic(path, value)
  return path
