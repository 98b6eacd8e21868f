"""The assigner of a model config: `cfg.assign.name` -> its rule.

Every assigner takes (boxes, classes, box_valid, is_crowd, locations, cfg)
and returns `targets.Targets`, so the loss does not depend on the choice.
"""

from __future__ import annotations

from fcos_jax.core import atss, targets
from fcos_jax.core.locations import Locations
from fcos_jax.model.config import ModelConfig

ASSIGN_FUNCTIONS = {"fcos": targets.assign_targets, "atss": atss.assign_atss}


def assign(boxes, classes, box_valid, is_crowd, locations: Locations,
           cfg: ModelConfig) -> targets.Targets:
  """The targets of `cfg.assign`'s rule (FCOS: core/targets.py; ATSS:
  core/atss.py)."""
  return ASSIGN_FUNCTIONS[cfg.assign.name](boxes, classes, box_valid, is_crowd,
                                           locations, cfg)
