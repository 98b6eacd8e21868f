"""FCOS: backbone (ResNet, ResNeXt or MobileNetV2) + FPN P3-P7 + shared head, outputs flattened over levels.

Naming: B = batch, P = locations over all levels (P3 first, each level
flattened row-major over (H_l, W_l), the order of
`fcos_jax.core.locations.compute_locations`), C = classes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcos_jax import errors
from fcos_jax.model.backbones import build_backbone
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.fpn import FPN
from fcos_jax.model.head import FCOSHead
from fcos_jax.model.outputs import HeadOutputs
from fcos_jax.model.tood_head import TOODHead
from fcos_jax.model.vfnet_head import VFNetHead

MODEL_STRIDES = (8, 16, 32, 64, 128)  # P3..P7, what this network produces.

# Parameters do not depend on the canvas: initialise on a small one.
INIT_CANVAS_HW = (64, 64)


P2_MODEL_STRIDES = (4,) + MODEL_STRIDES  # P2..P7 (`config.with_p2`).


def check_config(cfg: ModelConfig):
  if tuple(cfg.strides) == P2_MODEL_STRIDES:
    if cfg.backbone != "resnet":
      raise errors.ConfigError(
          f"ModelConfig.strides={cfg.strides}: P2 needs C2, which only "
          f"backbone='resnet' gives (got {cfg.backbone!r}).")
    return
  if tuple(cfg.strides) != MODEL_STRIDES:
    raise errors.ConfigError(
        f"ModelConfig.strides={cfg.strides}: the FCOS network produces P3-P7 "
        f"with strides {MODEL_STRIDES} (or P2-P7, {P2_MODEL_STRIDES}, with "
        f"config.with_p2); set strides to that.")


class FCOS(nn.Module):
  """Normalised images [B, H, W, 3] (see `preprocess.normalize_images`) ->

    cls_logits     float32 [B, P, C]  class logits.
    box_regression float32 [B, P, 4]  (l, t, r, b) distances, activated: in
                                      strides when cfg.norm_reg_targets
                                      (relu), else in pixels (exp); with
                                      box `anchor_deltas` the box decoded
                                      from its anchor, in pixels (any
                                      sign).
    centerness     float32 [B, P]     centerness logits.
  With GFL's joint quality centerness is None and box_distribution
  float32 [B, P, 4, reg_max + 1] holds the logits whose expectation is
  box_regression (fcos_jax/model/head.py). With VFNet's head
  (fcos_jax/model/vfnet_head.py) centerness is None, box_regression the
  refined box in pixels and box_initial float32 [B, P, 4] the initial one.
  With TOOD's T-head (fcos_jax/model/tood_head.py) centerness is None,
  cls_logits the logit of its score and box_regression its resampled box
  in pixels.
  """

  cfg: ModelConfig
  # False: the frozen parts without stop_gradient ops (the same values; for
  # tracers that cannot lower them, e.g. the ONNX export).
  stop_gradients: bool = True

  def setup(self):
    check_config(self.cfg)
    self.backbone = build_backbone(self.cfg, self.stop_gradients)
    self.fpn = FPN(self.cfg)
    head = {"vfnet": VFNetHead, "tood": TOODHead}.get(
        self.cfg.quality.name, FCOSHead)
    self.head = head(self.cfg)

  def level_outputs(self, images):
    """Per-level outputs: a list over P3..P7 of (cls [B, H_l, W_l, C],
    reg [B, H_l, W_l, 4], ctr [B, H_l, W_l])."""
    levels = self.fpn(self.backbone(images))
    # A Python loop over the 5 levels: the head parameters are shared.
    return [self.head(x, level) for level, x in enumerate(levels)]

  def __call__(self, images):
    outs = self.level_outputs(images)
    flat = lambda x: x.reshape(x.shape[0], x.shape[1] * x.shape[2],
                               *x.shape[3:])
    if self.cfg.quality.name == "vfnet":  # (cls, refined, initial) boxes.
      cls, reg, init = (jnp.concatenate([flat(o[i]) for o in outs], axis=1)
                        for i in range(3))
      return HeadOutputs(cls_logits=cls, box_regression=reg, centerness=None,
                         box_initial=init)
    if self.cfg.quality.name == "tood":  # (score logits, box in pixels).
      cls, reg = (jnp.concatenate([flat(o[i]) for o in outs], axis=1)
                  for i in range(2))
      return HeadOutputs(cls_logits=cls, box_regression=reg, centerness=None)
    if len(outs[0]) == 4:  # GFL: no centre-ness, a distribution per side.
      cls, reg, dist = (jnp.concatenate([flat(o[i]) for o in outs], axis=1)
                        for i in (0, 1, 3))
      return HeadOutputs(cls_logits=cls, box_regression=reg, centerness=None,
                         box_distribution=dist)
    cls, reg, ctr = (jnp.concatenate([flat(o[i]) for o in outs], axis=1)
                     for i in range(3))
    return HeadOutputs(cls_logits=cls, box_regression=reg, centerness=ctr)


def init_variables(cfg: ModelConfig, rng, canvas_hw=INIT_CANVAS_HW):
  """Fresh variables {"params": ...} for `FCOS(cfg)`.

  Jitted, so XLA drops the forward pass and only the initialisers run;
  also works under `jax.eval_shape` to get the shapes without any compute.
  The random numbers come from an "rbg" key drawn from `rng`: with the
  default threefry key, the ~400 initialisers of a ResNet-50 FCOS take
  several times longer to compile. Same `rng`, same backend: same values.
  """
  check_config(cfg)
  images = jnp.zeros((1, *canvas_hw, 3), jnp.float32)

  @jax.jit
  def init(rng, images):
    key = jax.random.wrap_key_data(
        jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")
    return FCOS(cfg).init(key, images)

  return init(rng, images)
