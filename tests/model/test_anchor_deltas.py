"""The `anchor_deltas` box choice (mmdetection's ATSSHead with
DeltaXYWHBBoxCoder): the decode against a NumPy restatement of
DeltaXYWHBBoxCoder.decode (a hand-checked case and random deltas), the
head's wiring per level, the GIoU of boxes that miss their location, the
config's refusals, and one training step."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fcos_jax import errors
from fcos_jax.core import losses
from fcos_jax.core.box_coding import decode_boxes
from fcos_jax.model import config as config_lib
from fcos_jax.model.config import AnchorDeltasBox, DistanceBox
from fcos_jax.model.config_dict import model_config_dict
from fcos_jax.model.fcos import FCOS, init_variables
from fcos_jax.model.head import anchor_deltas_to_distances
from fcos_jax.run import record

BOX = AnchorDeltasBox()


def delta_xywh_decode(anchors, deltas, stds=(0.1, 0.1, 0.2, 0.2),
                      wh_ratio_clip=16 / 1000):
  """mmdetection's DeltaXYWHBBoxCoder.decode (delta2bbox, means 0, no
  max_shape), restated in NumPy float64: anchors [N, 4] (x1, y1, x2, y2),
  deltas [N, 4] (dx, dy, dw, dh) -> boxes [N, 4]."""
  d = np.asarray(deltas, np.float64) * np.asarray(stds)
  dx, dy, dw, dh = d.T
  max_ratio = abs(np.log(wh_ratio_clip))
  dw, dh = np.clip(dw, -max_ratio, max_ratio), np.clip(dh, -max_ratio,
                                                      max_ratio)
  a = np.asarray(anchors, np.float64)
  px, py = (a[:, 0] + a[:, 2]) * 0.5, (a[:, 1] + a[:, 3]) * 0.5
  pw, ph = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
  gw, gh = pw * np.exp(dw), ph * np.exp(dh)
  gx, gy = px + pw * dx, py + ph * dy
  return np.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5,
                   gy + gh * 0.5], -1)


def _ours(points, deltas, side, box=BOX):
  ltrb = anchor_deltas_to_distances(jnp.asarray(deltas, jnp.float32), side,
                                    box)
  return np.asarray(decode_boxes(jnp.asarray(points, jnp.float32), ltrb))


def test_decode_by_hand():
  # Stride 8: a 64-px anchor centred on (16, 8). dx = 1 -> +0.1 * 64 =
  # 6.4 px; dy = -1 -> -6.4 px; dw = 0: 64 wide; dh = log(2) / 0.2: 128
  # high. A huge dw is clamped to log(1000 / 16): 64 * 62.5 = 4000 wide.
  points = np.array([[16.0, 8.0], [16.0, 8.0]])
  deltas = np.array([[1.0, -1.0, 0.0, math.log(2) / 0.2],
                     [0.0, 0.0, 100.0, -100.0]])
  got = _ours(points, deltas, 64.0)
  np.testing.assert_allclose(got[0], [-9.6, -62.4, 54.4, 65.6], atol=1e-4)
  np.testing.assert_allclose(got[1], [16 - 2000, 8 - 0.512, 16 + 2000,
                                      8 + 0.512], rtol=1e-5)
  anchors = np.array([[16 - 32, 8 - 32, 16 + 32, 8 + 32]] * 2, np.float64)
  np.testing.assert_allclose(delta_xywh_decode(anchors, deltas), got,
                             rtol=1e-5, atol=1e-4)


def test_decode_matches_numpy_delta_xywh_random():
  rng = np.random.default_rng(0)
  box = AnchorDeltasBox(anchor_scale=4.0, target_stds=(0.1, 0.2, 0.3, 0.4),
                        wh_ratio_clip=0.05)
  for stride in (8, 32, 128):
    side = box.anchor_scale * stride
    points = rng.uniform(0, 800, (500, 2))
    deltas = rng.normal(0, 6, (500, 4))  # Some beyond the clamp.
    anchors = np.concatenate([points - side / 2, points + side / 2], 1)
    want = delta_xywh_decode(anchors, deltas, box.target_stds,
                             box.wh_ratio_clip)
    got = _ours(points, deltas, side, box)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * side)
    # Distances may be negative, the box's extent never is.
    ltrb = np.asarray(anchor_deltas_to_distances(
        jnp.asarray(deltas, jnp.float32), side, box))
    assert (ltrb < 0).any() and (ltrb[:, 0] + ltrb[:, 2] > 0).all()


TINY = dict(num_classes=3, depth=18, width=8, freeze_at=0, backbone_norm="gn",
            fpn_channels=32, head_convs=1, gn_groups=8)


def test_head_decodes_each_level_from_its_anchor():
  """The head's anchor-delta boxes are the NumPy decode of scale * conv
  output from an 8-stride anchor at each level's locations: the same
  parameters with box `distances` (and norm_reg_targets off) give
  exp(scale * x), whose log is the deltas."""
  cfg = config_lib.atss_anchor(**TINY)
  variables = init_variables(cfg, jax.random.key(0))
  # Deltas of a few units (the init's are ~0): larger box-conv weights.
  params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  head = dict(params["head"])
  head["box_regression"] = {
      "kernel": 20 * head["box_regression"]["kernel"],
      "bias": jnp.array([0.5, -0.3, 0.2, -0.1])}
  params = dict(params, head=head)
  x = np.random.default_rng(1).normal(size=(1, 96, 128, 3)).astype(np.float32)
  levels = lambda c: FCOS(c).apply({"params": params}, x,
                                   method=FCOS.level_outputs)
  with jax.default_matmul_precision("highest"):
    ours = levels(cfg)
    raw = levels(cfg.replace(box=DistanceBox()))
  for l, ((_, ltrb, _), (_, dist, _)) in enumerate(zip(ours, raw)):
    s = cfg.strides[l]
    deltas = np.log(np.asarray(dist, np.float64)).reshape(-1, 4)
    h, w = ltrb.shape[1:3]
    ys, xs = np.meshgrid(np.arange(h) * s, np.arange(w) * s, indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    anchors = np.concatenate([pts - 4 * s, pts + 4 * s], 1)
    want = delta_xywh_decode(anchors, deltas)
    got = np.asarray(decode_boxes(jnp.asarray(pts, jnp.float32),
                                  jnp.asarray(ltrb).reshape(-1, 4)))
    assert np.abs(deltas).max() > 0.5, l
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * 8 * s)


def _giou_numpy(pred, target):
  """mmdetection's bbox_overlaps(mode="giou", is_aligned=True) on boxes."""
  lt, rb = np.maximum(pred[:, :2], target[:, :2]), np.minimum(
      pred[:, 2:], target[:, 2:])
  wh = np.clip(rb - lt, 0, None)
  inter = wh[:, 0] * wh[:, 1]
  area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  union = area(pred) + area(target) - inter
  e = np.maximum(pred[:, 2:], target[:, 2:]) - np.minimum(pred[:, :2],
                                                           target[:, :2])
  enclose = e[:, 0] * e[:, 1]
  return inter / union - (enclose - union) / enclose


def test_giou_of_boxes_that_miss_their_location():
  """With anchor deltas a decoded box may lie beside its location (negative
  distances); the loss then clamps the overlap at 0, as on boxes."""
  rng = np.random.default_rng(0)
  target = rng.uniform(1, 50, (400, 4))  # Around the location (0, 0).
  pred = rng.uniform(-40, 60, (400, 4))
  pred[:, 2] = np.abs(pred[:, 2]) - pred[:, 0] + 1  # Extent l + r > 0.
  pred[:, 3] = np.abs(pred[:, 3]) - pred[:, 1] + 1
  to_box = lambda d: np.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], 1)
  want = 1 - _giou_numpy(to_box(pred), to_box(target))
  got = losses.giou_loss(pred, target, 0.0, anchor_deltas=True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  apart = (np.minimum(pred[:, 0], target[:, 0])
           + np.minimum(pred[:, 2], target[:, 2])) < 0
  assert apart.sum() > 20
  # Without the flag (FCOS: both boxes contain the point) the values on
  # non-negative distances are the same, bit for bit.
  pos = np.abs(pred)
  np.testing.assert_array_equal(losses.giou_loss(pos, target, 1.0),
                                losses.giou_loss(pos, target, 1.0, True))


def test_config_choice_and_refusals():
  assert config_lib.ModelConfig().box == DistanceBox()
  cfg = config_lib.atss_anchor()
  assert cfg.box == AnchorDeltasBox()
  assert (cfg.box.anchor_scale, cfg.box.target_stds, cfg.box.wh_ratio_clip
          ) == (8.0, (0.1, 0.1, 0.2, 0.2), 16 / 1000)
  assert not cfg.norm_reg_targets and cfg.location_offset == "zero"
  # Mappings (a recorded config) build the same choice.
  assert config_lib.ModelConfig.from_dict(
      dict(model_config_dict(cfg))) == cfg
  assert config_lib.official(box={"name": "anchor_deltas"},
                             norm_reg_targets=False).box == AnchorDeltasBox()
  with pytest.raises(errors.ConfigError, match="norm_reg_targets=False"):
    config_lib.official(box={"name": "anchor_deltas"})
  for preset in ("gfl", "vfnet"):
    with pytest.raises(errors.ConfigError, match="box.name='anchor_deltas'"):
      config_lib.PRESETS[preset](box=AnchorDeltasBox(),
                                 norm_reg_targets=False)
  # TOOD's anchor-based T-head.
  assert config_lib.tood(box=AnchorDeltasBox()).box == AnchorDeltasBox()
  with pytest.raises(errors.ConfigError, match="target_stds"):
    AnchorDeltasBox(target_stds=(0.1, 0.1, 0.2))
  with pytest.raises(errors.ConfigError, match="wh_ratio_clip"):
    AnchorDeltasBox(wh_ratio_clip=2.0)
  with pytest.raises(errors.ConfigError, match="must be one of"):
    config_lib.official(box={"name": "deltas"})
  # The reported score: sqrt(prob * ctr) unless asked for the product.
  assert config_lib.InferenceConfig().score_combine == "sqrt"
  with pytest.raises(errors.ConfigError, match="score_combine"):
    config_lib.official(score_combine="mean")


def test_the_box_choice_is_architecture_on_resume():
  run = lambda m: ml_collections.ConfigDict(
      {"num_train_steps": 8, "allow_config_change": True,
       "model": model_config_dict(m)})
  old = record.as_plain(run(config_lib.atss_anchor()))
  changed = run(config_lib.atss_anchor(box=AnchorDeltasBox(anchor_scale=4.0)))
  with pytest.raises(errors.ConfigChangeError, match="model.box.anchor_scale"):
    record.check_resume(old, changed, "config.json")
  # A record made before the part existed (no `box`) resumes as distances.
  plain = record.as_plain(run(config_lib.official()))
  del plain["model"]["box"]
  assert record.check_resume(plain, run(config_lib.official()),
                             "config.json") == []


@pytest.mark.slow
def test_a_training_step_runs_with_anchor_deltas():
  """One SGD step of a tiny ATSS with anchor deltas: finite losses with
  positives, and the box branch moves."""
  from batches import one_train_step
  params, new, metrics = one_train_step(config_lib.atss_anchor(**TINY))
  assert np.isfinite(metrics["loss"]) and metrics["num_pos"] > 0, metrics
  assert metrics["loss_reg"] > 0
  assert not np.array_equal(params["head"]["box_regression"]["kernel"],
                            new.params["head"]["box_regression"]["kernel"])
