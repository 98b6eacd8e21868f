"""The assigner of a model config: `cfg.assign.name` -> its rule.

Every assigner takes (boxes, classes, box_valid, is_crowd, locations, cfg)
and returns `targets.Targets`, so the loss does not depend on the choice.
TOOD's TAL (`tal`) also reads the model's predictions and the training
step (`outputs`, `step`; core/tal.py); the others ignore them.
"""

from __future__ import annotations

from fcos_jax.core import atss, tal, targets
from fcos_jax.core.locations import Locations
from fcos_jax.model.config import ModelConfig

ASSIGN_FUNCTIONS = {"fcos": targets.assign_targets, "atss": atss.assign_atss}
ASSIGN_FUNCTIONS["tal"] = tal.assign_tood
# Assigners that also read the model's predictions and the training step.
READS_PREDICTIONS = frozenset({"tal"})


def assign(boxes, classes, box_valid, is_crowd, locations: Locations,
           cfg: ModelConfig, outputs=None, step=None) -> targets.Targets:
  """The targets of `cfg.assign`'s rule (FCOS: core/targets.py; ATSS:
  core/atss.py; TAL: core/tal.py, on `outputs` at training `step`, its
  warm-up's ATSS without outputs)."""
  if cfg.assign.name in READS_PREDICTIONS:
    return ASSIGN_FUNCTIONS[cfg.assign.name](
        boxes, classes, box_valid, is_crowd, locations, cfg, outputs, step)
  return ASSIGN_FUNCTIONS[cfg.assign.name](boxes, classes, box_valid, is_crowd,
                                           locations, cfg)
