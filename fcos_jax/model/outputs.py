"""`HeadOutputs`: what the FCOS model computes at every location.

P is the number of locations of the canvas over all levels
(`fcos_jax.core.locations.compute_locations`, levels P3..P7, each
row-major), C is `cfg.num_classes`. A pytree (flax.struct), so it passes
through jit, sharding and device_put like the dict it replaces.
"""

from __future__ import annotations

from typing import Any

from flax import struct

from fcos_jax.errors import ConfigError


@struct.dataclass
class HeadOutputs:
  cls_logits: Any  # [B, P, C] class logits.
  box_regression: Any  # [B, P, 4] activated distances (l, t, r, b): stride
  # units when cfg.norm_reg_targets, else pixels (box `anchor_deltas`: the
  # box decoded from the location's anchor, distances of any sign).
  centerness: Any  # [B, P] quality (centre-ness) logits; None when the
  # quality has no branch of its own (GFL's joint score).
  # [B, P, 4, reg_max + 1] logits of the distribution of each distance (l, t,
  # r, b) over {0, ..., reg_max} strides (GFL); box_regression is then its
  # expectation. None for FCOS.
  box_distribution: Any = None
  # [B, P, 4] VFNet's initial box (l, t, r, b) in pixels, from which its
  # deformable convs sample; box_regression is then the refined box. None
  # for the other heads.
  box_initial: Any = None

  def check(self, num_locations: int, num_classes: int, caller: str,
            batch: int | None = None) -> int:
    """Raises a ConfigError naming the field and the fix; returns B.

    batch: the B the caller expects (e.g. from the targets); None takes it
    from `cls_logits`.
    """
    b = self.cls_logits.shape[0] if batch is None else batch
    expected = {"cls_logits": (b, num_locations, num_classes),
                "box_regression": (b, num_locations, 4),
                "centerness": (b, num_locations)}
    if self.box_initial is not None:
      expected["box_initial"] = (b, num_locations, 4)
    if self.box_distribution is not None:
      expected["box_distribution"] = (
          b, num_locations, 4, self.box_distribution.shape[-1])
    for key, shape in expected.items():
      if getattr(self, key) is None and key in ("centerness",
                                                "box_distribution"):
        continue  # Optional by the config's quality (GFL has no ctr).
      got = tuple(getattr(self, key).shape)
      if got != shape:
        raise ConfigError(
            f"{caller}: outputs.{key} has shape {got}, expected {shape} "
            f"(B images, P = {num_locations} locations from compute_locations "
            f"of the same canvas, C = cfg.num_classes = {num_classes}); check "
            "the canvas and the config.")
    return b


def as_head_outputs(outputs, caller: str) -> HeadOutputs:
  """`outputs` if it is HeadOutputs; a TypeError naming the fix otherwise."""
  if not isinstance(outputs, HeadOutputs):
    raise TypeError(
        f"{caller}: outputs is a {type(outputs).__name__}; pass the "
        "HeadOutputs the FCOS model returns (fcos_jax.model.outputs).")
  return outputs
