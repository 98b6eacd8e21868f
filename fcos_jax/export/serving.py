"""The function every export format serves (see the package docstring)."""

from __future__ import annotations

import jax
import numpy as np

from fcos_jax.core import detect
from fcos_jax.model.config import ModelConfig

OUTPUT_KEYS = ("boxes", "scores", "classes", "valid")
INPUT_NAMES = ("images", "image_hw", "orig_hw")


def serving_function(cfg: ModelConfig, params):
  """fn(images, image_hw, orig_hw) -> dict of OUTPUT_KEYS, with the
  parameters closed over (they become constants of the exported program)."""

  def fn(images, image_hw, orig_hw):
    dets = detect.forward(params, images, image_hw, orig_hw, cfg)
    return {k: dets[k] for k in OUTPUT_KEYS}

  return fn


def input_specs(canvas_hw, batch):
  """ShapeDtypeStructs of the three inputs; batch an int or a symbolic dim."""
  h, w = (int(v) for v in canvas_hw)
  return (jax.ShapeDtypeStruct((batch, h, w, 3), np.uint8),
          jax.ShapeDtypeStruct((batch, 2), np.int32),
          jax.ShapeDtypeStruct((batch, 2), np.int32))


def as_numpy_params(params):
  return jax.tree.map(np.asarray, jax.device_get(params))
