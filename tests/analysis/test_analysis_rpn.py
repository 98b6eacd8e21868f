"""FCOS as an RPN: the rpn preset's settings, and class-agnostic targets
(every positive is label 0, the assignment itself unchanged)."""

import jax
import numpy as np
import pytest

import batches as batch_lib
from fcos_jax.core import targets
from fcos_jax.model.config import ModelConfig, official, rpn
from fcos_jax.core.locations import compute_locations


def test_rpn_preset():
  cfg = rpn()
  assert (cfg.num_classes, cfg.class_agnostic, cfg.inference.pre_nms_topk, cfg.inference.nms_iou,
          cfg.inference.max_detections) == (1, True, 1000, 0.7, 1000)
  assert ModelConfig.from_dict({"preset": "rpn"}) == cfg
  with pytest.raises(ValueError, match="class_agnostic=True needs num_classes=1"):
    official(num_classes=3, class_agnostic=True)


def test_class_agnostic_targets_are_label_zero():
  b = batch_lib.dummy_batch(2, (64, 64), 6, num_classes=4, seed=3)
  aware, agnostic = official(num_classes=4), rpn()
  loc = compute_locations((64, 64), aware)
  args = (b["boxes"], b["classes"], b["box_valid"], b["is_crowd"])
  t_aware = jax.jit(lambda *a: targets.assign_targets(*a, loc, aware))(*args)
  t_rpn = jax.jit(lambda *a: targets.assign_targets(*a, loc, agnostic))(*args)
  np.testing.assert_array_equal(t_rpn.matched_index, t_aware.matched_index)
  np.testing.assert_array_equal(t_rpn.reg_targets, t_aware.reg_targets)
  assert np.asarray(t_aware.labels)[np.asarray(t_aware.positive)].max() > 0
  assert (np.asarray(t_rpn.labels) == 0).all()
