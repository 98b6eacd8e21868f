"""Scale-out: the same training on 1 device, 8 devices and several processes,
and checkpoints that move between topologies.

In-process tests use the 8 fake CPU devices of conftest.py and the real
jitted `steps.train_step`. Multi-process tests start train.py-like workers
(tests/multiprocess_worker.py) and evaluate.py as local processes joined by
jax.distributed over 127.0.0.1; every process is ours, bounded in time and
killed by pid if it outlives its test.
"""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # For `configs` (the CLIs load it by path).
  sys.path.insert(0, str(ROOT))

from fcos_jax import runtime  # noqa: E402
from fcos_jax.batch import dummy_batch  # noqa: E402
from fcos_jax.model import param_groups  # noqa: E402
from fcos_jax.train import checkpoint, optimizer, steps  # noqa: E402
from fcos_jax.train.config import model_config_from  # noqa: E402
from fcos_jax.train.loop import create_train_state  # noqa: E402

TIMEOUT_S = 480  # Per group of subprocesses; a hung collective fails the test.
RTOL = 1e-5  # float32, reductions in another order or across processes.
CANVAS = (128, 128)
MAX_BOXES = 16
# Boxes per image of the global batch: three images without boxes, so the
# per-device positive counts (1 image a device on 8 devices) differ a lot.
BOXES_PER_IMAGE = (0, 1, 5, 0, 2, 12, 0, 3)


# --- In-process set-up --------------------------------------------------------


def tiny_config():
  """configs/synthetic_cpu.py shrunk as in tests/test_train_cli.py."""
  from configs import synthetic_cpu
  config = synthetic_cpu.get_config()
  config.model.width = 8
  config.model.fpn_channels = 32
  config.model.head_convs = 1
  config.model.gn_groups = 8
  config.data.canvases = (CANVAS,)
  config.global_batch_size = len(BOXES_PER_IMAGE)
  # A large constant LR: updates well above float32 rounding of the params.
  config.optim.base_lr = 0.5
  config.optim.warmup_steps = 0
  config.optim.decay_steps = ()
  return config


def make_batch(seed):
  """8 images with BOXES_PER_IMAGE boxes (random sizes and classes)."""
  n = len(BOXES_PER_IMAGE)
  batch = dummy_batch(n, CANVAS, MAX_BOXES, num_classes=3, seed=seed)
  valid = np.arange(MAX_BOXES)[None, :] < np.asarray(BOXES_PER_IMAGE)[:, None]
  batch["box_valid"] = valid
  batch["boxes"] = np.where(valid[..., None], batch["boxes"], 0).astype(np.float32)
  batch["classes"] = np.where(valid, batch["classes"], 0).astype(np.int32)
  return batch


class Setup:
  """Config, optimizer, initial state and jitted functions, shared by the
  in-process tests so each (function, mesh) compiles once."""

  def __init__(self):
    self.config = tiny_config()
    self.cfg = model_config_from(self.config.model)
    gbs = self.config.global_batch_size
    labels_fn = lambda params: param_groups.param_labels(params, self.cfg)
    self.tx = optimizer.make_optimizer(self.config.optim, gbs, labels_fn)
    self.schedule = optimizer.lr_schedule(self.config.optim, gbs)
    self.state0 = jax.device_get(
        create_train_state(self.config, self.cfg, self.tx, self.mesh(1)))
    self.batches = [make_batch(seed) for seed in range(3)]

  @functools.lru_cache(maxsize=None)
  def mesh(self, n):
    assert jax.device_count() >= 8, "conftest.py should give 8 CPU devices"
    return Mesh(np.asarray(jax.devices()[:n]), (runtime.DATA_AXIS,))

  def put_state(self, state, n):
    return jax.device_put(state, runtime.replicated(self.mesh(n)))

  def put_batch(self, batch, n):
    return jax.device_put(batch, runtime.batch_sharded(self.mesh(n)))

  @functools.lru_cache(maxsize=None)
  def train_step(self, n):
    """The loop's compiled step on an n-device mesh (no donation: the test
    keeps the input state)."""
    rep = runtime.replicated(self.mesh(n))
    data = runtime.batch_sharded(self.mesh(n))
    return jax.jit(functools.partial(steps.train_step, cfg=self.cfg,
                                     tx=self.tx, schedule=self.schedule),
                   in_shardings=(rep, data), out_shardings=(rep, rep))

  @functools.lru_cache(maxsize=None)
  def grad_fn(self, n):
    rep = runtime.replicated(self.mesh(n))
    data = runtime.batch_sharded(self.mesh(n))
    return jax.jit(jax.grad(steps.compute_loss, has_aux=True),
                   static_argnums=2, in_shardings=(rep, data),
                   out_shardings=rep)


@pytest.fixture(scope="module")
def setup():
  return Setup()


def max_rel_err(actual, expected):
  """max over leaves of |actual - expected| / |expected| (L2 norms)."""
  errs = jax.tree.map(
      lambda a, e: float(np.linalg.norm(np.asarray(a, np.float64) - e) /
                         max(np.linalg.norm(np.asarray(e, np.float64)), 1e-30)),
      actual, expected)
  return max(jax.tree.leaves(errs))


# --- 1. One step on 8 devices = one step on 1 device ---------------------------


def test_train_step_on_8_devices_matches_1_device(setup):
  batch = setup.batches[0]
  results = {}
  for n in (1, 8):
    state = setup.put_state(setup.state0, n)
    sharded = setup.put_batch(batch, n)
    assert len(sharded["image"].sharding.device_set) == n
    new_state, metrics = setup.train_step(n)(state, sharded)
    grads, _ = setup.grad_fn(n)(state.params, sharded, setup.cfg)
    assert len(jax.tree.leaves(new_state.params)[0].sharding.device_set) == n
    results[n] = jax.device_get((metrics, grads, new_state))
  (m1, g1, s1), (m8, g8, s8) = results[1], results[8]

  assert m1["num_pos"] == m8["num_pos"] > 0
  for k in ("loss", "loss_cls", "loss_reg", "loss_ctr", "grad_norm"):
    assert abs(m8[k] - m1[k]) <= RTOL * abs(m1[k]), (k, m8[k], m1[k])
  assert max_rel_err(g8, g1) <= RTOL
  # The update itself (not only params, which barely move relative to
  # themselves): new - old agrees, and so does the momentum it came from.
  upd1 = jax.tree.map(np.subtract, s1.params, setup.state0.params)
  upd8 = jax.tree.map(np.subtract, s8.params, setup.state0.params)
  assert max_rel_err(upd8, upd1) <= 10 * RTOL  # Cancellation in new - old.
  assert max_rel_err(s8.params, s1.params) <= RTOL
  assert max_rel_err(s8.opt_state, s1.opt_state) <= RTOL
  assert int(s8.step) == int(s1.step) == 1

  # Not vacuous: per-device normalisers (each of the 8 devices divides by
  # its own positive count and centerness sum, then the 8 losses and
  # gradients are averaged, as a pmean of local losses would) give a result
  # far outside the tolerance above.
  per_image = jax.tree.map(lambda x: x[:, None], batch)  # [8, 1, ...]
  local = jax.jit(jax.vmap(jax.value_and_grad(steps.compute_loss, has_aux=True),
                           in_axes=(None, 0, None)), static_argnums=2)
  (losses, _), grads = local(setup.state0.params, per_image, setup.cfg)
  local_loss = float(jnp.mean(losses))
  local_grads = jax.device_get(jax.tree.map(lambda g: jnp.mean(g, 0), grads))
  assert abs(local_loss - m1["loss"]) > 1e-2 * abs(m1["loss"]), (
      local_loss, m1["loss"])
  assert max_rel_err(local_grads, g1) > 1e3 * RTOL


# --- 3. A checkpoint from 4 devices restores on 1 and 8 -----------------------


def test_checkpoint_from_4_devices_resumes_on_1_4_and_8(setup, tmp_path):
  first, *more = setup.batches
  state = setup.train_step(4)(setup.put_state(setup.state0, 4),
                              setup.put_batch(first, 4))[0]
  saved = jax.device_get(state)
  manager = checkpoint.make_manager(str(tmp_path / "ckpt"), keep=2,
                                    save_every=1, async_save=False)
  assert checkpoint.save(manager, 1, state, {"step": 1}, force=True)
  manager.wait_until_finished()

  finals = {}
  for n in (1, 4, 8):
    target = checkpoint.abstract_like(saved, runtime.replicated(setup.mesh(n)))
    restored, meta = checkpoint.restore(manager, None, target)
    assert meta == {"step": 1}
    leaf = jax.tree.leaves(restored.params)[0]
    assert leaf.sharding.mesh.devices.size == n
    # The restore itself is exact, on any topology.
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), saved)
    for batch in more:
      restored = setup.train_step(n)(restored, setup.put_batch(batch, n))[0]
    finals[n] = jax.device_get(restored)
  manager.close()

  for n in (1, 8):
    assert int(finals[n].step) == 1 + len(more)
    assert max_rel_err(finals[n].params, finals[4].params) <= RTOL, n
    assert max_rel_err(finals[n].opt_state, finals[4].opt_state) <= RTOL, n
  # The continued steps did move the parameters well beyond the tolerance.
  assert max_rel_err(finals[4].params, saved.params) > 1e3 * RTOL
