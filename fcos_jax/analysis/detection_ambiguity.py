"""How many of a trained detector's final detections come from ambiguous
locations (paper section 3.2: 2.3% on COCO, 1.5% across classes).

For each evaluation batch: the model and post-processing as evaluation runs
them, with the location each detection came from
(`postprocess(..., with_locations=True)`); that location's ambiguity is
the dense match test of `assignment.location_matches` against the image's
ground truth, under the model's own assignment rule (its levels, size
ranges and centre sampling).
"""

from __future__ import annotations

import jax.numpy as jnp

from fcos_jax.core import postprocess
from fcos_jax.analysis import assignment
from fcos_jax.core import detect
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import compute_locations


def detection_counts(params, batch, cfg: ModelConfig, min_score: float = 0.0):
  """Sums over one batch (`fcos_jax.core.batch` format): detections (valid,
  score >= min_score), those whose location is ambiguous, and ambiguous
  across classes."""
  canvas_hw = batch["image"].shape[1:3]
  locations = compute_locations(canvas_hw, cfg)
  outputs = detect.head_outputs(params, batch["image"], batch["image_hw"], cfg)
  dets = postprocess.postprocess(outputs, locations, batch["image_hw"],
                                 batch["orig_hw"], cfg, with_locations=True)
  count, differ = assignment.location_matches(
      batch["boxes"], batch["classes"], batch["box_valid"], batch["is_crowd"],
      locations, cfg)
  loc = jnp.maximum(dets["locations"], 0)
  kept = (dets["valid"] & batch["example_valid"][:, None]
          & (dets["scores"] >= min_score))
  ambiguous = jnp.take_along_axis(count, loc, axis=1) >= 2
  across = jnp.take_along_axis(differ, loc, axis=1)
  return {
      "detections": jnp.sum(kept, dtype=jnp.int32),
      "ambiguous": jnp.sum(kept & ambiguous, dtype=jnp.int32),
      "ambiguous_classes": jnp.sum(kept & across, dtype=jnp.int32),
  }
