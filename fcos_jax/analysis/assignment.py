"""Best possible recall and ambiguous locations of FCOS's assignment rule.

Naming: B = images, P = locations over all levels, M = padded boxes.

- A non-crowd ground-truth box is *recalled* when at least one location is
  assigned to it by the training assigner (`targets.assign_targets`: inside
  test, size range, centre sampling, then the smallest area wins). Best
  possible recall (BPR) = recalled boxes / non-crowd boxes.
- A location is *positive* when at least one box passes the match test
  (before the smallest-area rule picks one), *ambiguous* when two or more
  do, and ambiguous *across classes* when those boxes are not all of one
  class. The shares are over positive locations (paper Table 2).

The per-(location, box) test is the assigner's own per-axis test
(`targets.axis_tests`), expanded to a dense [M, H_l, W_l] per level: the
assigner only needs the first match, this needs them all.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from fcos_jax.core import assign, targets
from fcos_jax.model import config as config_lib
from fcos_jax.model.config import ModelConfig
from fcos_jax.core.locations import Locations

# The paper's "without FPN" detector: P4 (stride 16) alone, every size.
P4_ALONE = dict(strides=(16,), size_ranges=((-1.0, math.inf),))
# The official centre-sampling radius, for configs that have it off.
DEFAULT_CENTER_RADIUS = 1.5


def _fcos_rule(cfg: ModelConfig) -> ModelConfig:
  """`cfg` with FCOS's assignment: its own, or the official one for its
  levels (with_p2's ranges for P2-P7) when it uses another rule."""
  if cfg.assign.name == "fcos":
    return cfg
  base = dataclasses.replace(cfg, strides=config_lib.ModelConfig().strides,
                             assign=config_lib.FCOSAssign())
  return config_lib.with_p2(base) if cfg.num_levels == 6 else base


def _levels(cfg: ModelConfig) -> str:
  first = int(math.log2(cfg.strides[0]))
  return f"P{first}-P{first + cfg.num_levels - 1}"


def fcos_settings(cfg: ModelConfig) -> dict[str, ModelConfig]:
  """The assignment rules of Tables 1-2, from the run's model config:
  its levels and size ranges (FPN) and P4 alone, each with and without
  centre sampling (the config's radius, or 1.5 if it has none). A config
  with another rule (ATSS) adds its own rule as a last setting (recall and
  positives only: the ambiguity count is FCOS's match test)."""
  own = {}
  if cfg.assign.name != "fcos":
    own = {f"{cfg.assign.name.upper()} (the config's rule), FPN "
           f"{_levels(cfg)}": cfg}
    cfg = _fcos_rule(cfg)
  radius = cfg.assign.center_sampling_radius or DEFAULT_CENTER_RADIUS
  fpn = cfg.replace(center_sampling_radius=0.0)
  p4 = fpn.replace(**P4_ALONE)
  return {
      f"FCOS, FPN {_levels(cfg)} with size ranges": fpn,
      f"FCOS, FPN {_levels(cfg)}, centre sampling r={radius:g}":
          fpn.replace(center_sampling_radius=radius),
      "FCOS, P4 alone (no FPN), no size limit": p4,
      f"FCOS, P4 alone, centre sampling r={radius:g}":
          p4.replace(center_sampling_radius=radius),
      **own,
  }


def _one_image_matches(boxes, classes, usable, grids, radius, inclusive):
  """Dense match test of one image: (count [P] int32 boxes passing,
  classes_differ [P] bool)."""
  counts, differ = [], []
  big = jnp.iinfo(jnp.int32).max
  for xs, ys, stride, (lo, hi) in grids:
    in_x, reach_x = targets.axis_tests(jnp.asarray(xs), boxes[:, 0:1],
                                        boxes[:, 2:3], stride, radius, lo, hi,
                                        inclusive)             # [M, W]
    in_y, reach_y = targets.axis_tests(jnp.asarray(ys), boxes[:, 1:2],
                                        boxes[:, 3:4], stride, radius, lo, hi,
                                        inclusive)             # [M, H]
    in_x = in_x & usable[:, None]
    match = (in_y[:, :, None] & in_x[:, None, :]
             & (reach_y[:, :, None] | reach_x[:, None, :]))  # [M, H, W]
    c = classes[:, None, None]
    cmin = jnp.min(jnp.where(match, c, big), axis=0)
    cmax = jnp.max(jnp.where(match, c, -1), axis=0)
    counts.append(jnp.sum(match, axis=0, dtype=jnp.int32).reshape(-1))
    differ.append(((cmax >= 0) & (cmin != cmax)).reshape(-1))
  return jnp.concatenate(counts), jnp.concatenate(differ)


def location_matches(boxes, classes, box_valid, is_crowd,
                     locations: Locations, cfg: ModelConfig):
  """For every location, how many usable boxes pass the match test.

  boxes [B, M, 4] canvas pixels, classes / box_valid / is_crowd [B, M].
  Returns (count [B, P] int32, classes_differ [B, P] bool: the passing
  boxes are of two or more classes).
  """
  grids = [targets.level_grid(locations, level)
           for level in range(cfg.num_levels)]
  usable = jnp.asarray(box_valid, bool) & ~jnp.asarray(is_crowd, bool)

  def one(b, c, u):
    return _one_image_matches(b, c, u, grids,
                              float(cfg.assign.center_sampling_radius),
                              bool(cfg.assign.size_range_inclusive))

  return jax.vmap(one)(jnp.asarray(boxes, jnp.float32),
                       jnp.asarray(classes, jnp.int32), usable)


def recalled_boxes(boxes, classes, box_valid, is_crowd, locations: Locations,
                   cfg: ModelConfig):
  """[B, M] bool: a location is assigned to the box by the config's
  assigner (`assign.assign`)."""
  tgt = assign.assign(boxes, classes, box_valid, is_crowd, locations, cfg)
  m = boxes.shape[1]
  index = jnp.where(tgt.matched_index < 0, m, tgt.matched_index)  # [B, P]
  hit = jax.vmap(lambda i: jnp.zeros((m + 1,), bool).at[i].set(True))(index)
  return hit[:, :m]


def assignment_counts(batch, locations: Locations, cfg: ModelConfig) -> dict:
  """Sums over one batch (see `split_boxes.box_batches`): boxes (usable),
  recalled, positive locations, ambiguous, ambiguous across classes."""
  args = (batch["boxes"], batch["classes"], batch["box_valid"],
          batch["is_crowd"], locations, cfg)
  usable = batch["box_valid"] & ~batch["is_crowd"]
  recalled = recalled_boxes(*args) & usable
  if cfg.assign.name != "fcos":  # Another rule: recall and positives only.
    tgt = assign.assign(*args)
    return {"boxes": jnp.sum(usable, dtype=jnp.int32),
            "recalled": jnp.sum(recalled, dtype=jnp.int32),
            "positive": jnp.sum(tgt.positive, dtype=jnp.int32)}
  count, differ = location_matches(*args)
  return {
      "boxes": jnp.sum(usable, dtype=jnp.int32),
      "recalled": jnp.sum(recalled, dtype=jnp.int32),
      "positive": jnp.sum(count >= 1, dtype=jnp.int32),
      "ambiguous": jnp.sum(count >= 2, dtype=jnp.int32),
      "ambiguous_classes": jnp.sum(differ, dtype=jnp.int32),
  }


@dataclasses.dataclass
class Totals:
  """Counts over a split, and the ratios the paper reports."""

  boxes: int = 0
  recalled: int = 0
  positive: int = 0
  ambiguous: int = 0
  ambiguous_classes: int = 0

  def add(self, counts: dict) -> None:
    for k, v in counts.items():
      setattr(self, k, getattr(self, k) + int(v))

  def as_dict(self) -> dict:
    ratio = lambda a, b: a / b if b else 0.0
    return dict(dataclasses.asdict(self),
                bpr=ratio(self.recalled, self.boxes),
                ambiguous_share=ratio(self.ambiguous, self.positive),
                ambiguous_classes_share=ratio(self.ambiguous_classes,
                                              self.positive))
