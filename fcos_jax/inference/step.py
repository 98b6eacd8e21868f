"""The jitted inference functions: one forward pass for evaluation,
prediction and export.

Nothing here depends on training (optimizer, losses, targets): a model
config and parameters are all it takes.
"""

from __future__ import annotations

from fcos_jax import postprocess
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.fcos import FCOS
from fcos_jax.model.locations import compute_locations
from fcos_jax.model.preprocess import normalize_images


def head_outputs(params, images_uint8, image_hw, cfg: ModelConfig):
  """uint8 RGB canvas [B, H, W, 3] + (h, w) of each image in it -> the head
  outputs of `FCOS` (cls_logits, box_regression, centerness; levels
  concatenated)."""
  images = normalize_images(images_uint8, image_hw, cfg)
  return FCOS(cfg).apply({"params": params}, images)


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
  """Detections of one batch (`fcos_jax.batch` format), fixed shape, in
  original image coordinates; padding examples come out invalid."""
  dets = forward(params, batch["image"], batch["image_hw"], batch["orig_hw"],
                 cfg)
  dets["valid"] = dets["valid"] & batch["example_valid"][:, None]
  dets["image_id"] = batch["image_id"]
  return dets
