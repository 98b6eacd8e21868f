"""FCOS losses against hand-computed values, a NumPy reimplementation of the
normalised loss, and torchvision."""

import dataclasses
import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcos_jax.core import losses
from fcos_jax.model import config as config_lib
from fcos_jax.core.locations import compute_locations
from fcos_jax.core.targets import assign_targets
from fcos_jax.model.outputs import HeadOutputs



# --- Elementwise losses, by hand -------------------------------------------

def test_iou_losses_by_hand():
  # A 2x2 box inside a 4x4 box, same centre: I = 4, U = 16, E = 16.
  pred, target = np.array([1., 1, 1, 1]), np.array([2., 2, 2, 2])
  np.testing.assert_allclose(losses.iou_loss(pred, target), -math.log(0.25),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.linear_iou_loss(pred, target), 0.75,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.giou_loss(pred, target), 0.75, rtol=1e-6)
  # 4x2 against 2x4 around the same point: I = 1x1, U = 15, E = 5x5.
  pred, target = np.array([1., 2, 3, 0]), np.array([2., 1, 0, 3])
  np.testing.assert_allclose(losses.iou_loss(pred, target), math.log(15),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.linear_iou_loss(pred, target), 14 / 15,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.giou_loss(pred, target),
                             1 - (1 / 15 - 10 / 25), rtol=1e-6)
  # Official smoothing: IoU = (I + 1) / (U + 1) = 2 / 16.
  np.testing.assert_allclose(losses.iou_loss(pred, target, smooth=1.0),
                             math.log(8), rtol=1e-6)
  np.testing.assert_allclose(losses.giou_loss(pred, target, smooth=1.0),
                             1 - (2 / 16 - 10 / 25), rtol=1e-6)
  # Identical boxes: no loss.
  np.testing.assert_allclose(losses.giou_loss(target, target), 0, atol=1e-6)


def test_focal_and_bce_by_hand():
  def focal(x, t, a=0.25, g=2.0):  # Lin et al.: -a_t (1 - p_t)^g log p_t
    p = 1 / (1 + math.exp(-x))
    if t:
      return -a * (1 - p) ** g * math.log(p)
    return -(1 - a) * p ** g * math.log(1 - p)

  xs = np.array([0.0, 2.0, -3.0, 7.5, -12.0], np.float32)
  for t in (0.0, 1.0):
    got = losses.sigmoid_focal_loss(xs, np.full_like(xs, t))
    want = [focal(float(x), t) for x in xs]
    np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(losses.sigmoid_focal_loss(0.0, 1.0, 0.5, 0.0),
                             0.5 * math.log(2), rtol=1e-6)
  # BCE: -(t log p + (1 - t) log(1 - p)).
  x, t = 1.3, 0.4
  p = 1 / (1 + math.exp(-x))
  np.testing.assert_allclose(losses.centerness_loss(x, t),
                             -(t * math.log(p) + (1 - t) * math.log(1 - p)),
                             rtol=1e-6)
  # Extreme logits stay finite, as do their gradients.
  big = np.array([-200.0, 200.0], np.float32)
  for t in (0.0, 1.0):
    assert np.isfinite(losses.sigmoid_focal_loss(big, t)).all()
    g = jax.grad(lambda x: losses.sigmoid_focal_loss(x, t).sum())(big)
    assert np.isfinite(g).all()


def test_focal_loss_equals_optax():
  import optax
  rng = np.random.default_rng(3)
  x = rng.normal(0, 6, (500,)).astype(np.float32)
  hard = (rng.random(500) < 0.3).astype(np.float32)
  soft = rng.random(500).astype(np.float32)
  for t in (hard, soft):
    for alpha, gamma in ((0.25, 2.0), (0.5, 1.5), (-1.0, 0.0)):
      want = optax.sigmoid_focal_loss(x, t, alpha=None if alpha < 0 else alpha,
                                      gamma=gamma)
      np.testing.assert_allclose(losses.sigmoid_focal_loss(x, t, alpha, gamma),
                                 want, rtol=2e-5, atol=1e-7)
  # The constant-target fast paths fcos_loss takes.
  for t in (0.0, 1.0):
    np.testing.assert_allclose(
        losses.sigmoid_focal_loss(x, t),
        optax.sigmoid_focal_loss(x, np.full_like(x, t), alpha=0.25),
        rtol=2e-5, atol=1e-7)


# --- The full normalised loss against NumPy ----------------------------------

def numpy_fcos_loss(outputs, targets, strides, cfg):
  """Spec section 3 in float64, with one-hot targets and the official
  formulas (IOULoss of tianzhi0549/FCOS, focal of Lin et al.)."""
  pos = np.asarray(targets.positive)
  labels = np.asarray(targets.labels)
  num_pos = max(pos.sum(), 1)
  x = np.asarray(outputs.cls_logits, np.float64)
  onehot = (labels[..., None] == np.arange(x.shape[-1])) & pos[..., None]
  # p, 1 - p, -log p and -log(1 - p) each without cancellation in float64.
  p, q = 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(x))
  a, g = cfg.loss.focal_alpha, cfg.loss.focal_gamma
  focal = np.where(onehot, a * q ** g * np.logaddexp(0, -x),
                   (1 - a) * p ** g * np.logaddexp(0, x))
  cls = focal.sum() / num_pos

  pred = np.asarray(outputs.box_regression, np.float64)[pos]
  if cfg.norm_reg_targets:
    pred = pred * np.broadcast_to(strides, pos.shape)[pos][:, None]
  tgt = np.asarray(targets.reg_targets, np.float64)[pos]
  ctr_t = np.asarray(targets.centerness, np.float64)[pos]
  pl, pt, pr, pb = pred.T
  tl, tt, tr, tb = tgt.T
  inter = (np.minimum(pl, tl) + np.minimum(pr, tr)) * (
      np.minimum(pt, tt) + np.minimum(pb, tb))
  union = (pl + pr) * (pt + pb) + (tl + tr) * (tt + tb) - inter
  enclose = (np.maximum(pl, tl) + np.maximum(pr, tr)) * (
      np.maximum(pt, tt) + np.maximum(pb, tb))
  s = cfg.loss.iou_smooth
  iou = (inter + s) / (union + s)
  if cfg.loss.reg_loss == "iou":
    per_box = -np.log(iou)
  elif cfg.loss.reg_loss == "linear_iou":
    per_box = 1 - iou
  else:
    per_box = 1 - (iou - (enclose - union) / enclose)
  if cfg.loss.reg_weighting == "centerness":
    reg = (per_box * ctr_t).sum() / ctr_t.sum() if pos.any() else 0.0
  else:
    reg = per_box.sum() / num_pos

  z = np.asarray(outputs.centerness, np.float64)[pos]
  ctr = (ctr_t * np.logaddexp(0, -z)
         + (1 - ctr_t) * np.logaddexp(0, z)).sum() / num_pos
  return {"loss_cls": cls, "loss_reg": reg, "loss_ctr": ctr,
          "num_pos": float(pos.sum())}


@functools.lru_cache(maxsize=None)
def jitted(cfg, canvas_hw=(96, 128)):
  """(locations, assign, loss, loss_and_grad), compiled once per config."""
  locations = compute_locations(canvas_hw, cfg)

  def loss(outputs, targets):
    return losses.fcos_loss(outputs, targets, locations, cfg)

  return (locations,
          jax.jit(lambda *a: assign_targets(*a, locations, cfg)),
          jax.jit(loss), jax.jit(jax.value_and_grad(loss, has_aux=True)))


def random_problem(cfg, canvas_hw=(96, 128), batch=3, num_boxes=6, seed=0,
                   empty_images=()):
  rng = np.random.default_rng(seed)
  locations, assign, _, _ = jitted(cfg, canvas_hw)
  h, w = canvas_hw
  xy = rng.uniform(0, [w, h], (batch, num_boxes, 2))
  wh = rng.uniform(6, 80, (batch, num_boxes, 2))
  boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], -1).astype(
      np.float32)
  classes = rng.integers(0, cfg.num_classes, (batch, num_boxes)).astype(
      np.int32)
  valid = np.ones((batch, num_boxes), bool)
  valid[list(empty_images)] = False
  targets = assign(boxes, classes, valid, np.zeros_like(valid))
  p = locations.num_locations
  reg = rng.uniform(0.2, 6, (batch, p, 4)).astype(np.float32)
  if not cfg.norm_reg_targets:  # pixels
    reg *= 8
  outputs = HeadOutputs(
      cls_logits=rng.normal(-3, 2, (batch, p, cfg.num_classes)).astype(
          np.float32),
      box_regression=reg,
      centerness=rng.normal(0, 1.5, (batch, p)).astype(np.float32))
  return locations, targets, outputs


LOSS_CONFIGS = {
    "official": config_lib.official(num_classes=7),
    "paper": config_lib.paper(num_classes=7),
    "torchvision": config_lib.torchvision(num_classes=7),
    "linear_iou": config_lib.official(num_classes=7, reg_loss="linear_iou"),
}


@pytest.mark.parametrize("name", sorted(LOSS_CONFIGS))
def test_fcos_loss_matches_numpy(name):
  cfg = LOSS_CONFIGS[name]
  locations, targets, outputs = random_problem(cfg, seed=len(name))
  total, metrics = jitted(cfg)[2](outputs, targets)
  want = numpy_fcos_loss(outputs, targets, locations.strides, cfg)
  assert want["num_pos"] > 10
  for key, value in want.items():
    np.testing.assert_allclose(metrics[key], value, rtol=2e-5, err_msg=key)
  np.testing.assert_allclose(
      total, want["loss_cls"] + want["loss_reg"] + want["loss_ctr"], rtol=2e-5)


@pytest.mark.parametrize("name", ["official", "paper", "torchvision"])
@pytest.mark.parametrize("empty", ["all", "some"])
def test_finite_with_empty_images(name, empty):
  cfg = LOSS_CONFIGS[name]
  empty_images = (0, 1, 2) if empty == "all" else (0, 2)
  locations, targets, outputs = random_problem(cfg, empty_images=empty_images)
  # Harsh outputs: zero distances (relu at 0) on some positives, extreme
  # logits, huge distances on background.
  background = ~np.asarray(targets.positive)
  outputs.box_regression[:, ::3] = 0.0
  outputs.box_regression[background & (np.arange(background.shape[1]) % 7
                                          == 1)] = 1e30
  outputs.cls_logits[:, ::5] = 30.0
  outputs.centerness[:, ::4] = -90.0
  (total, metrics), grads = jitted(cfg)[3](outputs, targets)
  assert np.isfinite(total)
  for g in jax.tree_util.tree_leaves(grads):
    assert np.isfinite(g).all()
  want = numpy_fcos_loss(outputs, targets, locations.strides, cfg)
  if empty == "all":
    assert metrics["num_pos"] == 0
    assert metrics["loss_reg"] == 0 and metrics["loss_ctr"] == 0
    assert (np.asarray(grads.box_regression) == 0).all()
    np.testing.assert_allclose(metrics["loss_cls"], want["loss_cls"],
                               rtol=2e-5)
  else:
    assert metrics["num_pos"] > 0
    np.testing.assert_allclose(metrics["loss_cls"], want["loss_cls"],
                               rtol=2e-5)
    np.testing.assert_allclose(metrics["loss_ctr"], want["loss_ctr"],
                               rtol=2e-5)
    np.testing.assert_allclose(metrics["loss_reg"], want["loss_reg"],
                               rtol=2e-5)


def test_bfloat16_outputs_give_a_float32_loss():
  cfg = LOSS_CONFIGS["official"]
  locations, targets, outputs = random_problem(cfg, seed=5)
  bf16 = jax.tree.map(lambda v: jnp.asarray(v, jnp.bfloat16), outputs)
  as_f32 = jax.tree.map(lambda v: np.asarray(v.astype(jnp.float32)), bf16)
  total, metrics = losses.fcos_loss(bf16, targets, locations, cfg)
  assert total.dtype == jnp.float32
  want = numpy_fcos_loss(as_f32, targets, locations.strides, cfg)
  for key in ("loss_cls", "loss_reg", "loss_ctr"):
    np.testing.assert_allclose(metrics[key], want[key], rtol=2e-5)


def test_gradient_matches_finite_differences():
  cfg = LOSS_CONFIGS["official"]
  locations, targets, outputs = random_problem(cfg, seed=9)
  _, grads = jitted(cfg)[3](outputs, targets)
  pos = np.argwhere(np.asarray(targets.positive))[:3]
  x64 = jax.tree.map(lambda v: v.astype(np.float64), outputs)
  for b, p in pos:
    for key, index in (("box_regression", (b, p, 1)), ("centerness", (b, p)),
                       ("cls_logits", (b, p, int(targets.labels[b, p])))):
      eps = 1e-2
      up, down = jax.tree.map(np.copy, x64), jax.tree.map(np.copy, x64)
      getattr(up, key)[index] += eps
      getattr(down, key)[index] -= eps
      numeric = (sum(numpy_fcos_loss(up, targets, locations.strides, cfg)[k]
                     for k in ("loss_cls", "loss_reg", "loss_ctr"))
                 - sum(numpy_fcos_loss(down, targets, locations.strides, cfg)[k]
                       for k in ("loss_cls", "loss_reg", "loss_ctr"))) / (2 * eps)
      np.testing.assert_allclose(getattr(grads, key)[index], numeric, rtol=2e-3,
                                 atol=1e-6, err_msg=key)


def test_sums_are_global_when_the_batch_is_sharded():
  # 8 fake CPU devices (conftest): each holds one image, some without boxes;
  # the loss must equal the unsharded one (global num_pos and weights).
  # On one real device (a GPU) it still checks that images 1, 2 are empty.
  n = jax.device_count()
  cfg = LOSS_CONFIGS["official"]
  locations, targets, outputs = random_problem(
      cfg, batch=n * -(-4 // n), seed=2, empty_images=(1, 2))
  mesh = jax.make_mesh((n,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  shard = lambda tree: jax.device_put(tree, sharding)
  total, metrics = jitted(cfg)[2](shard(outputs), shard(targets))
  want = numpy_fcos_loss(outputs, targets, locations.strides, cfg)
  for key, value in want.items():
    np.testing.assert_allclose(metrics[key], value, rtol=2e-5, err_msg=key)


def test_bad_outputs_are_named():
  cfg = LOSS_CONFIGS["official"]
  locations, targets, outputs = random_problem(cfg)
  bad = outputs.replace(cls_logits=outputs.cls_logits[..., :3])
  with pytest.raises(ValueError, match="cls_logits"):
    losses.fcos_loss(bad, targets, locations, cfg)
  with pytest.raises(TypeError, match="HeadOutputs"):
    losses.fcos_loss(dataclasses.asdict(outputs), targets, locations, cfg)


# --- torchvision ---------------------------------------------------------

@pytest.mark.torch
def test_elementwise_losses_match_torchvision():
  torch = pytest.importorskip("torch")
  from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss
  rng = np.random.default_rng(0)
  x = rng.normal(0, 4, (200,)).astype(np.float32)
  t = (rng.random(200) < 0.3).astype(np.float32)
  want = sigmoid_focal_loss(torch.from_numpy(x), torch.from_numpy(t),
                            alpha=0.25, gamma=2.0, reduction="none").numpy()
  np.testing.assert_allclose(losses.sigmoid_focal_loss(x, t), want,
                             rtol=1e-5, atol=1e-7)
  # Distances around points -> boxes for torchvision.
  point = rng.uniform(0, 100, (200, 2)).astype(np.float32)
  pred = rng.uniform(0, 30, (200, 4)).astype(np.float32)
  target = rng.uniform(0.5, 30, (200, 4)).astype(np.float32)

  def to_box(d):
    return torch.from_numpy(np.concatenate([point - d[:, :2],
                                            point + d[:, 2:]], -1))

  want = generalized_box_iou_loss(to_box(pred), to_box(target)).numpy()
  np.testing.assert_allclose(losses.giou_loss(pred, target), want,
                             rtol=1e-4, atol=1e-5)


def _load_bench():
  from benchmarks import bench_loss  # torchvision's side, shared.
  return bench_loss


@pytest.mark.torch
def test_assign_and_loss_match_torchvision_compute_loss():
  """Matching and loss end to end against torchvision's FCOS.compute_loss."""
  torch = pytest.importorskip("torch")
  bench = _load_bench()
  from batches import dummy_batch
  cfg = config_lib.torchvision(num_classes=6)
  canvas_hw = (256, 384)
  locations = compute_locations(canvas_hw, cfg)
  batch = dummy_batch(3, canvas_hw, 8, 6, seed=4, boxes_per_image=6)
  batch["box_valid"][1] = False  # an image without boxes
  outputs = bench.random_outputs(3, locations.num_locations, 6, seed=4)
  total, metrics = bench.make_ours(locations, cfg)(
      outputs, batch["boxes"], batch["classes"], batch["box_valid"],
      batch["is_crowd"])
  with torch.no_grad():
    want = bench.make_torchvision(cfg)(
        *bench.torchvision_inputs(batch, outputs, locations))
  assert metrics["num_pos"] > 20
  for ours, theirs in (("loss_cls", "classification"),
                       ("loss_reg", "bbox_regression"),
                       ("loss_ctr", "bbox_ctrness")):
    np.testing.assert_allclose(metrics[ours], float(want[theirs]), rtol=1e-5,
                               err_msg=ours)


@pytest.mark.torch
def test_bench_loss_smoke(tmp_path, capsys):
  pytest.importorskip("torch")
  out = tmp_path / "bench.json"
  _load_bench().main(["--smoke", "--json", str(out)])
  assert "speed-up" in capsys.readouterr().out
  result = json.loads(out.read_text())
  for side in ("ours_ms", "torchvision_ms"):
    s = result[side]
    assert 0 < s["min"] <= s["median"] <= s["max"]
  assert result["speedup_median"] == pytest.approx(
      result["torchvision_ms"]["median"] / result["ours_ms"]["median"])
  for side in ("ours", "optax"):
    s = result["focal_ms"][side]
    assert 0 < s["min"] <= s["median"] <= s["max"]
  for key in ("loss_cls", "loss_reg", "loss_ctr"):
    np.testing.assert_allclose(result["loss_ours"][key],
                               result["loss_torchvision"][key], rtol=1e-5)
  np.testing.assert_allclose(result["focal_sum"]["ours"],
                             result["focal_sum"]["optax"], rtol=1e-5)
