"""The jitted inference functions: one forward pass for evaluation,
prediction and export.

Nothing here depends on training (optimizer, losses, targets): a model
config and parameters are all it takes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fcos_jax.core import postprocess
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.batch_stats import BATCH_STATS
from fcos_jax.model.fcos import FCOS
from fcos_jax.core.locations import compute_locations
from fcos_jax.model.preprocess import normalize_images


def head_outputs(params, images_uint8, image_hw, cfg: ModelConfig, *,
                 batch_stats: bool = False, stop_gradients: bool = True):
  """uint8 RGB canvas [B, H, W, 3] + (h, w) of each image in it -> the head
  outputs of `FCOS` (cls_logits, box_regression, centerness; levels
  concatenated).

  batch_stats=True (training a backbone_norm="bn" model): its BatchNorms
  normalise with the batch's statistics; returns (outputs, statistics) for
  `fcos_jax.model.batch_stats.update_running_stats`.

  stop_gradients=False: the same outputs from a graph without
  stop_gradient ops (for the ONNX export, whose tracer cannot lower them)."""
  images = normalize_images(images_uint8, image_hw, cfg)
  model = FCOS(cfg, stop_gradients)
  if not batch_stats:
    return model.apply({"params": params}, images)
  outputs, variables = model.apply({"params": params}, images,
                                   mutable=[BATCH_STATS])
  return outputs, variables[BATCH_STATS]


def forward(params, images_uint8, image_hw, orig_hw, cfg: ModelConfig):
  """Normalisation, model, post-processing with NMS, on one canvas.

  images_uint8: [B, H, W, 3] RGB, each resized image at the top-left of the
  canvas, zeros elsewhere; image_hw: [B, 2] (h, w) of the resized images;
  orig_hw: [B, 2] (h, w) of the original images. Returns the fixed-size
  detections of `postprocess.postprocess` (boxes in original pixels).
  """
  canvas_hw = images_uint8.shape[1:3]
  outputs = head_outputs(params, images_uint8, image_hw, cfg)
  return postprocess.postprocess(outputs, compute_locations(canvas_hw, cfg),
                                 image_hw, orig_hw, cfg)


def eval_step(params, batch, *, cfg: ModelConfig):
  """Detections of one batch (`fcos_jax.core.batch` format), fixed shape, in
  original image coordinates; padding examples come out invalid."""
  dets = forward(params, batch["image"], batch["image_hw"], batch["orig_hw"],
                 cfg)
  dets["valid"] = dets["valid"] & batch["example_valid"][:, None]
  dets["image_id"] = batch["image_id"]
  return dets


def score_maps(outputs, level_sizes):
  """Per-level heatmaps of the paper's Fig. 3/8: for each location the best
  class's sqrt(sigmoid(cls) * sigmoid(centerness)), the score detections
  are ranked by. Returns a tuple over levels of float32 [B, H_l, W_l]."""
  prob = jax.nn.sigmoid(outputs.cls_logits.astype(jnp.float32)).max(-1)
  if outputs.centerness is None:  # GFL: the class score is the quality.
    score = prob
  else:
    ctr = jax.nn.sigmoid(outputs.centerness.astype(jnp.float32))
    score = jnp.sqrt(prob * ctr)
  maps, start = [], 0
  for h, w in level_sizes:
    maps.append(score[:, start:start + h * w].reshape(-1, h, w))
    start += h * w
  return tuple(maps)


def forward_with_maps(params, images_uint8, image_hw, orig_hw,
                      cfg: ModelConfig):
  """`forward`'s detections plus "maps", the `score_maps` of each level,
  from one pass of the model."""
  canvas_hw = images_uint8.shape[1:3]
  locations = compute_locations(canvas_hw, cfg)
  outputs = head_outputs(params, images_uint8, image_hw, cfg)
  dets = postprocess.postprocess(outputs, locations, image_hw, orig_hw, cfg)
  dets["maps"] = score_maps(outputs, locations.level_sizes)
  return dets
