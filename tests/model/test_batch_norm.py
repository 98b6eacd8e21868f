"""Trainable BatchNorm (backbone_norm="bn", the official MobileNetV2
models): batch statistics in training, PyTorch's running-statistics rule,
running statistics outside training, the global batch over devices (SyncBN),
and the optimizer groups."""

import functools

import jax
import numpy as np
import pytest
from flax import traverse_util

from batches import dummy_batch
from fcos_jax.model import batch_stats
from fcos_jax.model import config as config_lib
from fcos_jax.model.fcos import init_variables
from fcos_jax.train.param_groups import param_labels
from fcos_jax.model.resnet import BATCH_STATS, BatchNorm, FrozenBatchNorm
from fcos_jax.train import optimizer as optimizer_lib
from fcos_jax.train.state import TrainState
from fcos_jax.train.steps import train_step

EPS, MOMENTUM = 1e-5, 0.1
CFG = config_lib.official(
    num_classes=3, depth=18, width=8, freeze_at=0, backbone_norm="bn",
    bn_eps=EPS, fpn_channels=16, head_convs=1, gn_groups=8)


def _variables(c, rng):
  return {"params": {"scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
                     "bias": rng.normal(size=c).astype(np.float32),
                     "mean": rng.normal(size=c).astype(np.float32),
                     "var": rng.uniform(0.5, 2, c).astype(np.float32)}}


def test_batch_norm_in_training_against_numpy_and_pytorchs_rule():
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (4, 5, 6, 7)).astype(np.float32)
  v = _variables(7, rng)
  p = v["params"]
  y, stats = BatchNorm(EPS).apply(v, x, mutable=[BATCH_STATS])
  stats = stats[BATCH_STATS]
  x64 = x.astype(np.float64)
  mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))  # Biased, as BN uses.
  want = (x64 - mean) / np.sqrt(var + EPS) * p["scale"] + p["bias"]
  np.testing.assert_allclose(np.asarray(y), want, atol=2e-5)
  np.testing.assert_allclose(stats["mean"], mean, rtol=1e-5)
  np.testing.assert_allclose(stats["var"], var, rtol=1e-5)
  assert float(stats["count"]) == 4 * 5 * 6
  # PyTorch's running update: unbiased variance, momentum 0.1.
  new = batch_stats.update_running_stats(p, stats, MOMENTUM)
  n = 4 * 5 * 6
  np.testing.assert_allclose(new["mean"], 0.9 * p["mean"] + 0.1 * mean,
                             rtol=1e-5)
  np.testing.assert_allclose(
      new["var"], 0.9 * p["var"] + 0.1 * var * n / (n - 1), rtol=1e-5)
  np.testing.assert_array_equal(new["scale"], p["scale"])


def test_batch_norm_outside_training_is_frozen_batch_norm():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  v = _variables(5, rng)
  np.testing.assert_array_equal(BatchNorm(EPS).apply(v, x),
                                FrozenBatchNorm(EPS).apply(v, x))


def test_batch_norm_matches_torch_batchnorm2d_in_train_mode():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(2)
  x = rng.normal(1.0, 2.0, (3, 6, 5, 4)).astype(np.float32)
  v = _variables(4, rng)
  bn = torch.nn.BatchNorm2d(4, eps=EPS, momentum=MOMENTUM)
  with torch.no_grad():
    for ours, theirs in (("scale", "weight"), ("bias", "bias"),
                         ("mean", "running_mean"), ("var", "running_var")):
      getattr(bn, theirs).copy_(torch.from_numpy(v["params"][ours]))
  bn.train()
  want = bn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
  y, stats = BatchNorm(EPS).apply(v, x, mutable=[BATCH_STATS])
  np.testing.assert_allclose(np.asarray(y), want.detach().numpy(), atol=1e-5)
  new = batch_stats.update_running_stats(v["params"], stats[BATCH_STATS],
                                         MOMENTUM)
  np.testing.assert_allclose(new["mean"], bn.running_mean.numpy(), rtol=1e-5)
  np.testing.assert_allclose(new["var"], bn.running_var.numpy(), rtol=1e-5)


def test_param_groups_train_the_affine_not_the_statistics():
  params = init_variables(CFG, jax.random.key(0))["params"]
  labels = traverse_util.flatten_dict(param_labels(params, CFG))
  bn = {p[-1]: l for p, l in labels.items()
        if p[:3] == ("backbone", "res3", "block0") and p[3] == "bn1"}
  assert bn == {"scale": "norm", "bias": "bias", "mean": "frozen",
                "var": "frozen"}


def _step(params, batch, mesh=None):
  optim = optimizer_lib.default_optim_config()
  optim.warmup_steps = 0
  tx = optimizer_lib.make_optimizer(optim, 8, param_labels(params, CFG))
  state = TrainState.create(params, tx)
  step = jax.jit(functools.partial(
      train_step, cfg=CFG, tx=tx, schedule=optimizer_lib.lr_schedule(optim, 8)))
  if mesh is not None:
    from fcos_jax import runtime
    batch = jax.device_put(batch, runtime.batch_sharded(mesh))
  return step(state, batch)


def test_train_step_moves_running_statistics_over_the_global_batch():
  """One train step: every BN's running mean/var move by PyTorch's rule
  from the statistics of the whole batch (checked at the stem BN against
  the stem conv's output), the affine trains; and the batch sharded over
  8 devices gives the same step (one global batch mean: SyncBN)."""
  params = init_variables(CFG, jax.random.key(0))["params"]
  batch = dummy_batch(8, (64, 64), 3, CFG.num_classes, seed=0)
  new, metrics = _step(params, batch)
  assert np.isfinite(float(metrics["loss"]))
  stem_old, stem_new = params["backbone"]["stem"], new.params["backbone"]["stem"]
  # The stem BN's input, recomputed: conv of the normalised images.
  from fcos_jax.model.preprocess import normalize_images
  images = normalize_images(batch["image"], batch["image_hw"], CFG)
  k = stem_old["conv"]["kernel"]
  z = np.asarray(jax.lax.conv_general_dilated(
      images, k, (2, 2), ((3, 3), (3, 3)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST), np.float64)
  n = z.shape[0] * z.shape[1] * z.shape[2]
  mean, var = z.mean((0, 1, 2)), z.var((0, 1, 2)) * n / (n - 1)
  bn_old, bn_new = stem_old["bn"], stem_new["bn"]
  np.testing.assert_allclose(bn_new["mean"], 0.9 * np.asarray(bn_old["mean"])
                             + 0.1 * mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bn_new["var"], 0.9 * np.asarray(bn_old["var"])
                             + 0.1 * var, rtol=1e-4)
  assert not np.array_equal(bn_new["scale"], bn_old["scale"])
  # SyncBN: 8 devices, one image each, the same step.
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  from fcos_jax import runtime
  mesh = runtime.make_mesh(8)
  sharded, _ = _step(params, batch, mesh)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(sharded.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4,
                               atol=2e-6)
