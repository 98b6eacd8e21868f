"""The FCOS model's output dict, checked once for the loss and inference.

  cls_logits     [B, P, C]  class logits
  box_regression [B, P, 4]  activated distances (l, t, r, b)
  centerness     [B, P]     centerness logits

P is the number of locations of the canvas (`compute_locations`), C is
`cfg.num_classes`.
"""

from __future__ import annotations

KEYS = ("cls_logits", "box_regression", "centerness")


def check(outputs, num_locations: int, num_classes: int, caller: str,
          batch: int | None = None) -> int:
  """Raises a KeyError or ValueError naming the field and the fix; returns B.

  batch: the B the caller expects (e.g. from the targets); None takes it
  from `cls_logits`.
  """
  for key in KEYS:
    if key not in outputs:
      raise KeyError(
          f"{caller}: outputs has no {key!r} (keys: {sorted(outputs)}); pass "
          "the dict returned by the FCOS model.")
  b = outputs["cls_logits"].shape[0] if batch is None else batch
  expected = {"cls_logits": (b, num_locations, num_classes),
              "box_regression": (b, num_locations, 4),
              "centerness": (b, num_locations)}
  for key, shape in expected.items():
    got = tuple(outputs[key].shape)
    if got != shape:
      raise ValueError(
          f"{caller}: outputs[{key!r}] has shape {got}, expected {shape} "
          f"(B images, P = {num_locations} locations from compute_locations of "
          f"the same canvas, C = cfg.num_classes = {num_classes}); check the "
          "canvas and the config.")
  return b
