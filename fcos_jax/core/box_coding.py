"""Conversions between FCOS distances (l, t, r, b) and boxes (x0, y0, x1, y1).

The head's `box_regression` output is already activated (relu or exp): in
stride units when `cfg.norm_reg_targets`, else in pixels.
"""

from __future__ import annotations

import jax.numpy as jnp

from fcos_jax.model.config import ModelConfig


def distances_to_pixels(box_regression, strides, cfg: ModelConfig):
  """[..., P, 4] head distances -> [..., P, 4] distances in pixels.

  strides: [P] stride of each location (`Locations.strides`).
  """
  if cfg.norm_reg_targets:
    return box_regression * jnp.asarray(strides, box_regression.dtype)[:, None]
  return box_regression


def decode_boxes(points, ltrb):
  """points [P, 2] (x, y) and distances [..., P, 4] -> boxes [..., P, 4]."""
  x, y = points[:, 0], points[:, 1]
  return jnp.stack([x - ltrb[..., 0], y - ltrb[..., 1],
                    x + ltrb[..., 2], y + ltrb[..., 3]], axis=-1)


def encode_boxes(points, boxes):
  """points [P, 2] and boxes [..., P, 4] -> distances (l, t, r, b) [..., P, 4]."""
  x, y = points[:, 0], points[:, 1]
  return jnp.stack([x - boxes[..., 0], y - boxes[..., 1],
                    boxes[..., 2] - x, boxes[..., 3] - y], axis=-1)
