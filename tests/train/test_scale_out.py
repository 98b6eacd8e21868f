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
import optax
import pytest
from jax.sharding import Mesh
from tiny_run import TINY_RUN, as_flags

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # For `configs` (the CLIs load it by path).
  sys.path.insert(0, str(ROOT))

from fcos_jax import runtime  # noqa: E402
from batches import dummy_batch  # noqa: E402
from fcos_jax.train import param_groups  # noqa: E402
from fcos_jax.run import checkpoint
from fcos_jax.train import optimizer, steps
from fcos_jax.model.config_dict import model_config_from  # noqa: E402
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
  from fcos_jax.configs import synthetic_cpu
  config = synthetic_cpu.get_config()
  config.model.width = 8
  config.model.fpn_channels = 32
  config.model.head_convs = 1
  config.model.gn_groups = 8
  # Every parameter trainable (no frozen BN), so every gradient is checked.
  config.model.backbone_norm = "gn"
  config.data.canvases = (CANVAS,)
  config.global_batch_size = len(BOXES_PER_IMAGE)
  # A large constant LR: updates well above float32 rounding of the params.
  config.optim.base_lr = 0.5
  config.optim.warmup_steps = 0
  config.optim.decay_steps = ()
  # No weight decay and no clipping: the momentum after the first step is
  # then the gradient itself, so the train step shows it (no extra compile).
  config.optim.weight_decay = 0.0
  config.optim.weight_decay_norm = 0.0
  config.optim.weight_decay_bias = 0.0
  config.optim.grad_clip_norm = 0.0
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



def first_step_gradient(opt_state, params):
  """The gradient of the first step, read from the momentum (the optimizer
  groups' `trace`, masked elsewhere), as a tree like `params`."""
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  flat, treedef = jax.tree.flatten(params)
  grads = [None] * len(flat)
  for _, trace in optax.tree_utils.tree_get_all_with_path(opt_state, "trace"):
    for i, g in enumerate(jax.tree.leaves(trace, is_leaf=is_masked)):
      if not is_masked(g):
        assert grads[i] is None
        grads[i] = g
  assert all(g is not None for g in grads), "a parameter without momentum"
  return jax.tree.unflatten(treedef, grads)


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
    assert len(jax.tree.leaves(new_state.params)[0].sharding.device_set) == n
    new_state = jax.device_get(new_state)
    grads = first_step_gradient(new_state.opt_state, new_state.params)
    results[n] = jax.device_get(metrics), grads, new_state
  (m1, g1, s1), (m8, g8, s8) = results[1], results[8]

  assert m1["num_pos"] == m8["num_pos"] > 0
  # The momentum read back is the gradient the step took (its global norm
  # is what the step reports).
  assert abs(float(optax.tree.norm(g1)) - m1["grad_norm"]) <= (
      RTOL * m1["grad_norm"])
  for k in ("loss", "loss_cls", "loss_reg", "loss_ctr", "grad_norm"):
    assert abs(m8[k] - m1[k]) <= RTOL * abs(m1[k]), (k, m8[k], m1[k])
  assert max_rel_err(g8, g1) <= RTOL
  # The updated parameters (new - old itself is ill-conditioned: one float32
  # rounding of a parameter is ~1e-4 of a small update) and the whole
  # optimizer state.
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
                                    async_save=False)
  assert checkpoint.save(manager, 1, state, {"step": 1})
  assert not checkpoint.save(manager, 1, state, {"step": 1})  # Never twice.
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


# --- 2. Two processes x 2 devices = one process x 4 devices -------------------


def cli_args(synthetic_dir, steps, **extra):
  """Overrides that shrink configs/synthetic_cpu.py to a seconds-long run."""
  args = dict(TINY_RUN, **{
      "data.synthetic.dir": str(synthetic_dir),
      "data.num_parallel_calls": 1,
      # Untrained scores are ~0.01: keep every candidate, so the evaluation
      # compares real detection lists (AP itself is ~0 after a few steps).
      "model.inference.score_thresh": 0.0,
      "num_train_steps": steps,
      "checkpoint_every_steps": 1000,  # Only the final, forced one.
      "optim.warmup_steps": 1,
      "optim.decay_steps": "()",
  })
  args.update(extra)
  return ["--config", str(ROOT / "configs/synthetic_cpu.py")] + as_flags(args)


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(devices, **extra):
  """The environment of one worker: its own fake CPU devices."""
  env = {k: v for k, v in os.environ.items() if k not in (
      "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **extra)
  return env


def distributed_env(devices, port, num_processes, process_id):
  return process_env(
      devices, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
      JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(process_id))


def run_together(jobs, log_dir):
  """Runs every (name, argv, env) at once and waits for all of them.

  Bounded by TIMEOUT_S in all; when one fails the others are stopped (a
  peer of a failed process would wait for it). Every process started here
  is killed by its pid if still running on the way out.
  """
  started = []
  try:
    for name, argv, env in jobs:
      log = open(log_dir / f"{name}.log", "w")
      started.append((name, log, subprocess.Popen(
          [sys.executable] + argv, cwd=ROOT, env=env, stdout=log,
          stderr=subprocess.STDOUT)))
    deadline = time.time() + TIMEOUT_S
    while any(p.poll() is None for _, _, p in started):
      failed = [n for n, _, p in started if p.poll() not in (None, 0)]
      if failed or time.time() > deadline:
        break
      time.sleep(0.2)
  finally:
    for _, log, p in started:
      if p.poll() is None:
        p.kill()
        p.wait(timeout=60)
      log.close()
  for name, _, p in started:
    if p.returncode != 0:
      text = (log_dir / f"{name}.log").read_text()
      raise AssertionError(f"{name} exited with {p.returncode} (timeout "
                           f"{TIMEOUT_S} s):\n{text[-6000:]}")


def load_checkpoint(step_dir):
  """The whole train state of a checkpoint written on any topology, as
  NumPy arrays (restored onto this process's first device)."""
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  path = pathlib.Path(step_dir) / "state"
  tree = ckptr.metadata(path)
  tree = getattr(tree, "item_metadata", tree)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), tree)
  return jax.device_get(ckptr.restore(path, target))


@pytest.mark.slow
def test_two_processes_train_and_evaluate_like_one(tmp_path):
  from fcos_jax.data import synthetic
  steps_ = 2
  data_dir = tmp_path / "synthetic"
  # Made once here: processes started together would race to make it.
  synthetic.ensure_synthetic_dataset(str(data_dir), num_train=24, num_val=8,
                                     image_size=128)
  worker = str(ROOT / "tests" / "multiprocess_worker.py")
  one, two = tmp_path / "one_process", tmp_path / "two_processes"
  port = free_port()
  jobs = [("one_process", [worker, "--workdir", str(one), "--record_ids",
                           "--emulate_processes=2"] +
           cli_args(data_dir, steps_, eval_at_end=False), process_env(4))]
  for i in range(2):
    jobs.append((f"process{i}", [worker, "--workdir", str(two), "--record_ids"]
                 + cli_args(data_dir, steps_), distributed_env(2, port, 2, i)))
  run_together(jobs, tmp_path)
  assert "2 local / 4 global devices" in (tmp_path / "process1.log").read_text()

  # Each process read only its slice; together, the one process's batches.
  read = lambda d, p: json.loads((d / f"train_ids_process{p}.json").read_text())
  ids0, ids1, ids_one = read(two, 0), read(two, 1), read(one, 0)
  assert len(ids0) == len(ids1) == len(ids_one) == steps_
  assert all(len(b) == 4 for b in ids0 + ids1)
  assert not set(sum(ids0, [])) & set(sum(ids1, []))
  assert [a + b for a, b in zip(ids0, ids1)] == ids_one

  # The same parameters and optimizer state (a cross-process all-reduce sums
  # in another order than one process: not always bitwise).
  final_two = load_checkpoint(two / "checkpoints" / str(steps_))
  final_one = load_checkpoint(one / "checkpoints" / str(steps_))
  assert int(final_two["step"]) == int(final_one["step"]) == steps_
  assert max_rel_err(final_two["params"], final_one["params"]) <= RTOL
  # The momentum holds raw gradients, whose smallest leaves (sums that
  # nearly cancel) carry more relative rounding: 2.5e-5 seen.
  assert max_rel_err(final_two["opt_state"], final_one["opt_state"]) <= 10 * RTOL
  momentum = [x for x in jax.tree.leaves(final_one["opt_state"])
              if x.dtype == np.float32]
  assert max(float(np.abs(x).max()) for x in momentum) > 0  # It trained.

  # One process evaluates the two-process checkpoint: the detections and
  # the AP of the two-process evaluation (at the end of training).
  evaluated = tmp_path / "evaluated_by_one"
  run_together([("evaluate", [
      str(ROOT / "evaluate.py"), "--workdir", str(evaluated),
      f"--checkpoint={two / 'checkpoints' / str(steps_)}"] +
      cli_args(data_dir, steps_), process_env(4))], tmp_path)
  eval_json = lambda d, what: json.loads(
      (d / "eval" / f"{what}_step{steps_}.json").read_text())
  m_two, m_one = eval_json(two, "metrics"), eval_json(evaluated, "metrics")
  assert m_two["num_images"] == m_one["num_images"] == 8
  for k, v in m_one.items():
    assert abs(m_two[k] - v) <= 1e-6, (k, m_two[k], v)
  d_two, d_one = eval_json(two, "detections"), eval_json(evaluated, "detections")
  assert len(d_two) == len(d_one) > 8
  assert_same_detections(d_two, d_one)


def assert_same_detections(actual, expected):
  """One-to-one match per image: same class, score and box up to the JSON
  rounding (5 decimals for scores, 2 for boxes) of values ~1e-7 apart."""
  from scipy.optimize import linear_sum_assignment
  by_image = lambda dets: {i: [d for d in dets if d["image_id"] == i]
                           for i in {d["image_id"] for d in dets}}
  a_all, e_all = by_image(actual), by_image(expected)
  assert a_all.keys() == e_all.keys()
  for image_id, a in a_all.items():
    e = e_all[image_id]
    assert len(a) == len(e), image_id
    rows = lambda ds: (np.array([d["category_id"] for d in ds]),
                       np.array([[d["score"] / 2e-5] + [v / 0.02 for v in d["bbox"]]
                                 for d in ds]))
    (ca, va), (ce, ve) = rows(a), rows(e)
    # Cost: the largest difference in units of the tolerance; other class: no.
    cost = np.abs(va[:, None] - ve[None]).max(-1)
    cost = np.where(ca[:, None] == ce[None], cost, 1e9)
    r, c = linear_sum_assignment(cost)
    assert cost[r, c].max() <= 1.0, (image_id, cost[r, c].max())
