"""Image normalisation, run on the device inside the jitted steps."""

from __future__ import annotations

import jax.numpy as jnp

from fcos_jax.model.config import ModelConfig


def normalize_images(images, image_hw, cfg: ModelConfig):
  """uint8 RGB canvas [B, H, W, 3] -> normalised float32 [B, H, W, 3].

  images:   the resized image at the top-left of each canvas, zeros elsewhere.
  image_hw: int [B, 2], (h, w) of the resized image in its canvas.
  Channels are flipped to BGR when `cfg.input_bgr`; pixels are scaled to
  0..`cfg.input_range`, then (x - pixel_mean) / pixel_std. The padding area
  is exactly 0 after normalisation, as torchvision pads normalised images.
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
        f"normalize_images: images must be [B, H, W, 3], got {images.shape}.")
  x = images.astype(jnp.float32)
  if cfg.input_bgr:
    x = x[..., ::-1]
  x = x * (cfg.input_range / 255.0)
  x = (x - jnp.asarray(cfg.pixel_mean, jnp.float32)) / jnp.asarray(
      cfg.pixel_std, jnp.float32)
  h, w = images.shape[1:3]
  image_hw = jnp.asarray(image_hw)
  inside = ((jnp.arange(h)[None, :, None] < image_hw[:, 0, None, None]) &
            (jnp.arange(w)[None, None, :] < image_hw[:, 1, None, None]))
  return jnp.where(inside[..., None], x, 0.0)
