"""The run layer under faults: nothing lost, nothing hung, no traceback.

One writer per workdir (lock.json, local and gs://), checkpoints that
survive damage (restore falls back and says so), fcos-convert --overwrite
staged beside the workdir, evaluate.py never overwriting training's
results, the NaN guard on what is saved, config validation before anything
is written, and the validation split's categories checked at start-up.
"""

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from cli_runs import (checkpoint_steps, cli_env, command, final_params, run,
                      tiny_args, wait_for)
from gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)

from fcos_jax import errors, storage
from fcos_jax.run import Run, checkpoint
from fcos_jax.run import lock as lock_lib
from fcos_jax.run.validate import validate


def _one_error_line(proc):
  err = proc.stderr
  assert proc.returncode == 1, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, err[-3000:]
  return lines[0]


# --- 6. Config validation ------------------------------------------------------


def _default():
  from fcos_jax.configs import default
  return default.get_config()


def _set(config, field, value):
  node = config
  *parents, last = field.split(".")
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[last] = value
  return config


@pytest.mark.parametrize("field,value", [
    ("global_batch_size", 0), ("global_batch_size", 2.5),
    ("num_train_steps", -5), ("num_train_steps", 0),
    ("checkpoint_every_steps", 0), ("log_every_steps", -1),
    ("eval_batch_size", 0), ("keep_checkpoints", 0),
    ("data.canvases", (128, 128)), ("data.canvases", "abc"),
    ("data.canvases", ()), ("data.canvases", ((128, 0),)),
    ("data.min_size", (800, 640)), ("data.min_size", "800"),
    ("data.min_size", 0), ("data.synthetic.image_size", "big"),
    ("model.pixel_mean", (0.5, 0.5)), ("model.pixel_std", (1.0, 0.0, 1.0)),
    ("optim.base_lr", float("nan")), ("optim.base_lr", -0.1),
    ("optim.momentum", 1.5), ("optim.warmup_method", "cosine"),
    ("optim.decay_steps", (80000, 60000)), ("data.flip_prob", 2.0),
    ("model.inference.score_thresh", float("nan")),
    ("model.inference.score_thresh", -1.0),
    ("model.inference.score_thresh", 1.5),
    ("model.inference.nms_iou", float("inf")),
    ("model.inference.max_detections", -5),
    ("model.inference.max_detections", 0),
    ("model.inference.pre_nms_topk", 2.5),
    ("tta.scales", (400, -1)), ("tta.max_size", 0),
])
def test_validation_names_field_value_and_example(field, value):
  with pytest.raises(errors.ConfigError) as e:
    validate(_set(_default(), field, value))
  text = str(e.value)
  assert f"config.{field}={value!r}" in text and "e.g. --config." in text
  assert "\n" not in text


def test_validation_of_the_flat_spelling_names_it():
  """Runs recorded before the model's parts existed spell the inference
  fields flat (model.score_thresh): checked, and named, as they are."""
  config = _default()
  model = config.model.to_dict()
  model.update(model.pop("inference"))
  model["max_detections"] = -1
  import ml_collections
  config.model = ml_collections.ConfigDict(model)
  with pytest.raises(errors.ConfigError,
                     match=r"config\.model\.max_detections=-1: .* e\.g\. "
                     r"--config\.model\.max_detections=100"):
    validate(config)


@pytest.mark.parametrize("name", ["default", "synthetic_cpu",
                                  "fcos_imprv_r50_1x",
                                  "fcos_imprv_r50_2x_ms", "fcos_paper_r50_1x",
                                  "fcos_rpn_r50_1x", "torchvision_r50",
                                  "coco_format", "atss_r50_1x",
                                  "fcos_iou_r50_1x", "gfl_r50_1x",
                                  "fcos_imprv_r101_2x_ms",
                                  "synthetic_atss_cpu", "synthetic_gfl_cpu",
                                  "synthetic_iou_cpu", "synthetic_p2_cpu",
                                  "synthetic_rpn_cpu", "atss_anchor_r50_1x"])
def test_packaged_configs_validate(name):
  import importlib
  validate(importlib.import_module(f"fcos_jax.configs.{name}").get_config())
  # Valid variants: multi-scale min_size and a rectangular synthetic size.
  config = importlib.import_module(f"fcos_jax.configs.{name}").get_config()
  _set(config, "data.min_size", (640, 800))
  _set(config, "data.synthetic.image_size", (96, 128))
  validate(config)


def test_bad_config_is_refused_before_anything_is_written(tmp_path):
  workdir = tmp_path / "run"
  for bad, field in [("--config.num_train_steps=-5", "num_train_steps"),
                     ("--config.data.canvases=(128,128)", "data.canvases"),
                     ("--config.optim.base_lr=nan", "optim.base_lr")]:
    proc = run("train.py", workdir, tiny_args(tmp_path, 2) + [bad],
               check=False)
    line = _one_error_line(proc)
    assert f"config.{field}=" in line
    assert not workdir.exists() or not any(workdir.iterdir())


# --- 7. Validation categories at start-up; no record from a failed start --------


def test_val_categories_are_checked_before_training(tmp_path):
  from coco_files import write_coco
  images = [(128, 128, [(10, 10, 60, 70, 1, 0)])] * 8
  train_js, train_im = write_coco(str(tmp_path / "train"), images,
                                  categories=[(1, "cat")])
  val_js, val_im = write_coco(str(tmp_path / "val"), images,
                              categories=[(1, "cat"), (2, "dog")])
  workdir = tmp_path / "run"
  args = tiny_args(tmp_path, 2) + [
      "--config.data.source=coco_format",
      f"--config.data.coco.train_json={train_js}",
      f"--config.data.coco.train_images={train_im}",
      f"--config.data.coco.val_json={val_js}",
      f"--config.data.coco.val_images={val_im}", "--config.model.num_classes=1"]
  t0 = time.time()
  line = _one_error_line(run("train.py", workdir, args, check=False))
  assert val_js in line and "[2]" in line, line
  assert time.time() - t0 < 120  # At start-up, not after a run.
  # A failed start leaves no record and no lock.
  assert not (workdir / "config.json").exists()
  assert not (workdir / "categories.json").exists()
  assert not (workdir / "lock.json").exists()
  assert checkpoint_steps(workdir) == []


# --- 1. One writer per workdir --------------------------------------------------


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_refuses_a_second_writer_and_names_the_holder(tmp_path):
  run_ = Run(str(tmp_path / "run"))
  with run_.lock("train.py") as held:
    holder = json.loads(pathlib.Path(run_.lock_file).read_text())
    assert holder["pid"] == os.getpid()
    assert holder["host"] == socket.gethostname()
    with pytest.raises(errors.WorkdirLockedError) as e:
      run_.lock("fcos-convert").acquire()
    text = str(e.value)
    assert f"pid {os.getpid()}" in text and socket.gethostname() in text
    assert holder["started"] in text and "\n" not in text
    assert held.refresh()
  assert not os.path.exists(run_.lock_file)  # Released.


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  run_ = Run(str(tmp_path / "run"))
  os.makedirs(run_.workdir)
  stale = {"host": socket.gethostname(), "pid": _dead_pid(),
           "command": "train.py", "started": "2026-01-01T00:00:00+00:00",
           "heartbeat": time.time(), "token": "old"}
  pathlib.Path(run_.lock_file).write_text(json.dumps(stale))
  with caplog.at_level(logging.WARNING), run_.lock("train.py"):
    assert json.loads(pathlib.Path(run_.lock_file).read_text())[
        "pid"] == os.getpid()
  assert any("Taking over" in r.getMessage() and "is gone" in r.getMessage()
             for r in caplog.records)


def test_lock_with_an_old_heartbeat_is_taken_over_and_refreshed(tmp_path,
                                                                caplog):
  run_ = Run(str(tmp_path / "run"))
  os.makedirs(run_.workdir)
  other = {"host": "another-host", "pid": 1, "command": "train.py",
           "started": "2026-01-01T00:00:00+00:00",
           "heartbeat": time.time() - 50, "token": "old"}
  pathlib.Path(run_.lock_file).write_text(json.dumps(other))
  with pytest.raises(errors.WorkdirLockedError, match="another-host"):
    run_.lock("train.py", stale_after_s=100).acquire()
  with caplog.at_level(logging.WARNING):
    lock = run_.lock("train.py", stale_after_s=10, heartbeat_s=0.2).acquire()
  try:
    assert any("heartbeat" in r.getMessage() for r in caplog.records)
    first = json.loads(pathlib.Path(run_.lock_file).read_text())["heartbeat"]
    time.sleep(1.0)  # The holder's thread refreshes it.
    later = json.loads(pathlib.Path(run_.lock_file).read_text())["heartbeat"]
    assert later > first
  finally:
    lock.release()
  assert not os.path.exists(run_.lock_file)


def test_lock_on_gcs(gcs):  # noqa: F811
  workdir = f"gs://{BUCKET}/locked_run"
  run_ = Run(workdir)
  with run_.lock("train.py"):
    assert storage.exists(run_.lock_file)
    with pytest.raises(errors.WorkdirLockedError, match="train.py"):
      run_.lock("train.py").acquire()
  assert not storage.exists(run_.lock_file)


@pytest.mark.slow
def test_two_train_py_on_one_workdir(tmp_path):
  """Started together: one trains, the other exits 1 with one line; the
  first, stopped with SIGTERM, saves a checkpoint, releases the lock, and
  its checkpoints restore."""
  workdir = tmp_path / "run"
  args = tiny_args(tmp_path, 400, eval_at_end=False, checkpoint_every_steps=2)
  procs = []
  for i in range(2):
    log = open(tmp_path / f"train{i}.log", "w")
    procs.append(subprocess.Popen(
        command("train.py", workdir, args), env=cli_env(), stdout=log,
        stderr=subprocess.PIPE, text=True))
  try:
    deadline = time.time() + 600
    while all(p.poll() is None for p in procs):
      assert time.time() < deadline, "neither process ended"
      time.sleep(0.2)
    loser = next(p for p in procs if p.poll() is not None)
    winner = next(p for p in procs if p is not loser)
    err = loser.stderr.read()
    assert loser.returncode == 1 and "Traceback" not in err, err[-3000:]
    lines = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1 and f"pid {winner.pid}" in lines[0], err[-3000:]
    assert winner.poll() is None
    holder = json.loads((workdir / "lock.json").read_text())
    assert holder["pid"] == winner.pid
    wait_for(lambda: len(checkpoint_steps(workdir)) >= 2, [winner],
             "two checkpoints")
    winner.send_signal(signal.SIGTERM)
    assert winner.wait(timeout=300) == 0, winner.stderr.read()[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert not (workdir / "lock.json").exists()
  step, params = final_params(workdir)
  assert step >= 2 and all(np.isfinite(v).all() for v in params.values())


# --- 2. Checkpoints that survive damage ----------------------------------------


def _damage(folder: pathlib.Path, how: str):
  state = folder / "state"
  if how == "truncated_data":
    files = [p for p in state.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
      with open(p, "r+b") as f:
        f.truncate(p.stat().st_size // 2)
  elif how == "missing_manifest":
    (state / "manifest.ocdbt").unlink()
  elif how == "emptied":
    import shutil
    for p in folder.iterdir():
      shutil.rmtree(p) if p.is_dir() else p.unlink()
  elif how == "missing_checkpoint_metadata":
    (folder / "_CHECKPOINT_METADATA").unlink()
  else:
    raise AssertionError(how)


def _saved_run(tmp_path, steps=(1, 2)):
  """A checkpoints folder with a {params, step} state per step (random
  values that differ per step); the abstract params; the saved params."""
  directory = str(tmp_path / "checkpoints")
  manager = checkpoint.make_manager(directory, keep=10, async_save=False)
  saved = {}
  for s in steps:
    params = {"w": jax.random.normal(jax.random.key(s), (64, 32)),
              "b": jax.random.normal(jax.random.key(100 + s), (32,))}
    checkpoint.save(manager, s, {"params": params, "step": jnp.int32(s)},
                    {"step": s})
    saved[s] = jax.device_get(params)
  manager.wait_until_finished()
  manager.close()
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoint.abstract_like(saved[steps[0]], sharding)
  return directory, abstract, saved


def _tree_listing(root):
  return sorted((str(p.relative_to(root)), p.stat().st_size)
                for p in pathlib.Path(root).rglob("*") if p.is_file())


@pytest.mark.parametrize("how", ["truncated_data", "missing_manifest",
                                 "emptied", "missing_checkpoint_metadata"])
def test_restore_falls_back_past_a_damaged_checkpoint(tmp_path, caplog, how):
  directory, abstract, saved = _saved_run(tmp_path)
  _damage(pathlib.Path(directory) / "2", how)
  before = _tree_listing(directory)
  with caplog.at_level(logging.WARNING):
    params, step = checkpoint.restore_params(directory, None, abstract)
  # Whichever step restored holds exactly what was saved at that step.
  for k in saved[step]:
    np.testing.assert_array_equal(np.asarray(params[k]), saved[step][k])
  if how == "missing_checkpoint_metadata":
    # The arrays and their metadata are intact: orbax restores the step.
    assert step == 2
  else:
    assert step == 1
    ours = [r.getMessage() for r in caplog.records
            if r.pathname == checkpoint.__file__]
    named = [m for m in ours if f"{directory}/2" in m]
    assert len(named) == 1, [r.getMessage() for r in caplog.records]
  assert _tree_listing(directory) == before  # Nothing deleted or rewritten.


def test_no_restorable_checkpoint_is_one_line_naming_them(tmp_path):
  directory, abstract, _ = _saved_run(tmp_path)
  _damage(pathlib.Path(directory) / "2", "truncated_data")
  _damage(pathlib.Path(directory) / "1", "missing_manifest")
  before = _tree_listing(directory)
  with pytest.raises(errors.CheckpointReadError) as e:
    checkpoint.restore_params(directory, None, abstract)
  text = str(e.value)
  assert "step(s) 2 (" in text and ", 1 (" in text and "\n" not in text
  assert "move the step folders" in text
  # An explicit step is not replaced by another one.
  with pytest.raises(errors.CheckpointReadError, match=f"{directory}/2"):
    checkpoint.restore_params(directory, 2, abstract)
  assert _tree_listing(directory) == before


@pytest.mark.slow
def test_training_resumes_past_a_damaged_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  args = tiny_args(tmp_path, 4, eval_at_end=False)
  run("train.py", workdir, args)
  assert checkpoint_steps(workdir) == [2, 4]
  _damage(workdir / "checkpoints" / "4", "truncated_data")
  damaged = _tree_listing(workdir / "checkpoints" / "4")
  proc = run("train.py", workdir, args)
  assert "checkpoints/4 cannot be restored" in proc.stderr
  assert "Resumed from" in proc.stderr and "at step 2" in proc.stderr
  # The damaged folder is kept aside, and step 4 is trained and saved again.
  assert _tree_listing(workdir / "checkpoints_damaged" / "4") == damaged
  assert checkpoint_steps(workdir) == [2, 4]
  step, params = final_params(workdir)
  assert step == 4 and all(np.isfinite(v).all() for v in params.values())
  assert not (workdir / "lock.json").exists()


# --- 3. fcos-convert --overwrite stages the new run ----------------------------


def _old_run(tmp_path):
  workdir = tmp_path / "converted"
  (workdir / "checkpoints" / "7").mkdir(parents=True)
  (workdir / "checkpoints" / "7" / "data").write_bytes(b"old weights")
  (workdir / "config.json").write_text('{"old": 1}')
  (workdir / "categories.json").write_text('{"categories": []}')
  (workdir / "notes.txt").write_text("the user's own file")
  return workdir


def test_convert_overwrite_with_a_bogus_file_leaves_the_old_run(tmp_path):
  from fcos_jax.cli.convert import convert_to_workdir
  from fcos_jax.configs import torchvision_r50
  workdir = _old_run(tmp_path)
  before = _tree_listing(workdir)
  bogus = tmp_path / "weights.npz"
  bogus.write_bytes(b"this is no npz archive" * 10)
  with pytest.raises(errors.DataError) as e:
    convert_to_workdir(str(bogus), str(workdir), torchvision_r50.get_config(),
                       overwrite=True)
  text = str(e.value)
  assert str(bogus) in text and "allow_pickle" not in text and "\n" not in text
  assert _tree_listing(workdir) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["converted",
                                                        "weights.npz"]


@pytest.mark.slow
def test_convert_overwrite_swaps_only_after_success(tmp_path):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "cli"))
  from test_convert_cli import random_torchvision_state_dict
  from fcos_jax.cli.convert import convert_to_workdir
  from fcos_jax.configs import torchvision_r50
  workdir = _old_run(tmp_path)
  before = _tree_listing(workdir)
  sd = random_torchvision_state_dict()
  broken = dict(sd)
  broken.pop("head.classification_head.cls_logits.bias")
  with pytest.raises(Exception):
    convert_to_workdir(broken, str(workdir), torchvision_r50.get_config(),
                       overwrite=True)
  assert _tree_listing(workdir) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]
  convert_to_workdir(sd, str(workdir), torchvision_r50.get_config(),
                     overwrite=True)
  assert checkpoint_steps(workdir) == [0]
  assert not (workdir / "checkpoints" / "7").exists()
  assert (workdir / "notes.txt").read_text() == "the user's own file"
  assert json.loads((workdir / "config.json").read_text())["model"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]
  assert not (workdir / "lock.json").exists()


# --- 4. evaluate.py never overwrites training's results ------------------------


def test_evaluation_dir_never_collides_with_trainings(tmp_path):
  from fcos_jax.configs import synthetic_cpu
  config = synthetic_cpu.get_config()
  run_ = Run(str(tmp_path / "run"))
  os.makedirs(run_.eval_dir)
  run_.write_config(config)
  # The recorded config, a step training did not evaluate: the run's names.
  assert run_.evaluation_dir(config, 3, "/d/val.json") == run_.eval_dir
  pathlib.Path(run_.eval_dir, "metrics_step3.json").write_text("{}")
  ours = run_.evaluation_dir(config, 3, "/d/val.json")
  assert ours.startswith(run_.eval_dir + "/val_step3_")
  other = _set(synthetic_cpu.get_config(), "data.coco.val_json",
               "/d/other_val.json")
  theirs = run_.evaluation_dir(other, 5, "/d/other_val.json")
  assert theirs.startswith(run_.eval_dir + "/other_val_step5_")
  changed = _set(synthetic_cpu.get_config(), "model.inference.score_thresh",
                 0.5)
  assert run_.evaluation_dir(changed, 3, "/d/val.json") not in (
      ours, run_.eval_dir)


@pytest.mark.slow
def test_evaluate_with_another_config_keeps_trainings_metrics(tmp_path):
  workdir = tmp_path / "run"
  args = tiny_args(tmp_path, 2)
  run("train.py", workdir, args)
  own = workdir / "eval" / "metrics_step2.json"
  written = own.read_bytes()
  proc = run("evaluate.py", workdir, args + [
      "--config.model.inference.score_thresh=0.3"])
  assert "COCO bbox evaluation at step 2" in proc.stdout
  assert own.read_bytes() == written
  others = list((workdir / "eval").glob("val_step2_*/metrics_step2.json"))
  assert len(others) == 1
  out = tmp_path / "elsewhere"
  run("evaluate.py", workdir, args + [f"--out={out}"])
  assert (out / "metrics_step2.json").exists() and own.read_bytes() == written


# --- 5. The NaN guard checks what is saved --------------------------------------


def test_a_nan_update_is_never_applied(monkeypatch):
  """A finite loss and gradient with a NaN learning rate: the update is
  NaN, so the step is refused and the parameters stay the last finite ones."""
  from fcos_jax.train import state as state_lib
  from fcos_jax.train import steps

  def quadratic(params, batch, cfg, step=None):
    del cfg, step
    loss = jnp.sum((params["w"] - batch["x"]) ** 2)
    return loss, ({"l": loss}, {})

  monkeypatch.setattr(steps, "compute_loss", quadratic)
  lr = {"value": 0.1}
  schedule = lambda step: jnp.where(step >= 2, jnp.nan, lr["value"])
  tx = optax.sgd(schedule, momentum=0.9)
  state = state_lib.TrainState.create({"w": jnp.zeros(4)}, tx)
  batch = {"x": jnp.ones(4)}
  step = jax.jit(lambda s, b: steps.train_step(s, b, cfg=None, tx=tx,
                                               schedule=schedule))
  history = []
  for _ in range(4):
    state, metrics = step(state, batch)
    history.append(np.asarray(state.params["w"]))
  assert np.isfinite(float(metrics["loss"]))  # Loss and gradient are finite.
  assert int(state.first_bad_step) == 2  # The third update is NaN.
  assert all(np.isfinite(h).all() for h in history)
  np.testing.assert_array_equal(history[3], history[1])
  assert not np.array_equal(history[1], history[0])


def test_nan_message_names_the_last_checkpoint_or_none(tmp_path):
  from fcos_jax.train import loop
  from fcos_jax.train import state as state_lib
  tx = optax.sgd(0.1)
  bad = state_lib.TrainState.create({"w": jnp.zeros(4)}, tx).replace(
      first_bad_step=jnp.int32(0))
  manager = checkpoint.make_manager(str(tmp_path / "ck"), keep=3,
                                    async_save=False)
  with pytest.raises(errors.NonFiniteLossError) as e:
    loop._check_finite(bad, manager)
  assert "step None" not in str(e.value)
  assert "no checkpoint yet" in str(e.value) and "at step 1" in str(e.value)
  good = state_lib.TrainState.create({"w": jnp.zeros(4)}, tx)
  checkpoint.save(manager, 3, good, {"step": 3})
  with pytest.raises(errors.NonFiniteLossError, match=r"\(step 3\)"):
    loop._check_finite(bad, manager)
  manager.close()


@pytest.mark.slow
def test_nan_learning_rate_saves_only_finite_checkpoints(tmp_path,
                                                         monkeypatch):
  """optim.base_lr=nan with checkpoint_every_steps=1, in-process with the
  start-up validation (which refuses it on the command line) bypassed: no
  update is applied, nothing is saved, the message says so."""
  from fcos_jax.cli.common import configure_logging
  from fcos_jax.configs import synthetic_cpu
  from fcos_jax.train import loop
  from tiny_run import TINY_RUN
  configure_logging()
  config = synthetic_cpu.get_config()
  overrides = dict(TINY_RUN, **{
      "data.synthetic.dir": str(tmp_path.parent / "synthetic_tiny"),
      "data.canvases": ((128, 128),), "num_train_steps": 3,
      "checkpoint_every_steps": 1, "eval_at_end": False,
      "optim.base_lr": float("nan"), "optim.warmup_steps": 0})
  for k, v in overrides.items():
    _set(config, k, v)
  monkeypatch.setattr(loop, "validate", lambda config: None)
  workdir = tmp_path / "run"
  with pytest.raises(errors.NonFiniteLossError) as e:
    loop.train_and_evaluate(config, str(workdir))
  assert "at step 1" in str(e.value) and "no checkpoint yet" in str(e.value)
  assert checkpoint_steps(workdir) == []
  assert not (workdir / "lock.json").exists()


def test_evaluation_into_a_new_folder_uses_the_plain_names(tmp_path):
  from fcos_jax.configs import synthetic_cpu
  run_ = Run(str(tmp_path / "evaluated"))  # No record: nothing to collide.
  assert run_.evaluation_dir(synthetic_cpu.get_config(), 4,
                             "/d/val.json") == run_.eval_dir


def test_a_start_whose_first_batch_fails_leaves_no_record(tmp_path):
  """Every training image unreadable: the first batch cannot be built, so
  neither config.json nor categories.json is written (nor a lock left)."""
  from coco_files import write_coco
  js, im = write_coco(str(tmp_path / "data"),
                      [(128, 128, [(10, 10, 60, 70, 1, 0)])] * 8,
                      categories=[(1, "cat")])
  for p in pathlib.Path(im).iterdir():
    p.write_bytes(b"not an image")
  workdir = tmp_path / "run"
  args = tiny_args(tmp_path, 2, eval_at_end=False) + [
      "--config.data.source=coco_format",
      f"--config.data.coco.train_json={js}",
      f"--config.data.coco.train_images={im}",
      "--config.model.num_classes=1"]
  line = _one_error_line(run("train.py", workdir, args, check=False))
  assert im in line or "not an image" in line or ".png" in line, line
  left = {p.name for p in workdir.iterdir()} if workdir.exists() else set()
  assert not left & {"config.json", "categories.json", "lock.json"}, left
  # The checkpoints folder the start made is removed while empty.
  assert "checkpoints" not in left, left


def test_a_refused_start_leaves_no_empty_folders(tmp_path):
  """A start refused after the workdir was made (the data has other
  categories than model.num_classes): the folders it made are gone; a
  folder that was there before stays, with the user's file."""
  workdir = tmp_path / "new" / "run"
  args = tiny_args(tmp_path, 2, eval_at_end=False) + [
      "--config.model.num_classes=2"]
  line = _one_error_line(run("train.py", workdir, args, check=False))
  assert "num_classes" in line, line
  assert not workdir.exists()
  kept = tmp_path / "kept"
  kept.mkdir()
  (kept / "notes.txt").write_text("mine")
  _one_error_line(run("train.py", kept, args, check=False))
  assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_start_up_releases_the_lock(tmp_path, sig):
  """Before the loop: no traceback, no lock left, no record written."""
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
      command("train.py", workdir, tiny_args(tmp_path, 50, eval_at_end=False)),
      env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      text=True)
  try:
    wait_for(lambda: (workdir / "lock.json").exists(), [proc], "the lock")
    proc.send_signal(sig)
    rc = proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  err = proc.stderr.read()
  assert rc in (0, 128 + sig), err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert not (workdir / "lock.json").exists()
  if rc:  # Stopped before the first step: nothing recorded.
    assert not (workdir / "config.json").exists()


def test_signal_whose_start_up_stop_was_dropped_stops_before_the_first_step(
    tmp_path):
  """A signal handled where Python cannot raise (here a __del__; in CI a
  gc callback of jax's) loses its exception: no traceback is printed, the
  run stops when the loop starts, and the lock is released."""
  workdir = tmp_path / "run"
  script = (
      "import os, signal, sys\n"
      "from fcos_jax import errors\n"
      "from fcos_jax.run import Run\n"
      "from fcos_jax.train import loop\n"
      "class SignalledWhileCollected:\n"
      "  def __del__(self):\n"
      "    os.kill(os.getpid(), signal.SIGTERM)\n"
      "    sum(range(100000))  # The handler runs here, inside __del__.\n"
      f"run = Run({str(workdir)!r})\n"
      "try:\n"
      "  with loop._holding_workdir(run, 'train.py', 1) as stop:\n"
      "    assert os.path.exists(run.workdir + '/lock.json')\n"
      "    SignalledWhileCollected()\n"
      "    print('start-up went on', stop.received, flush=True)\n"
      "    stop.start_loop()\n"
      "    print('trained', flush=True)\n"
      "except errors.StoppedBeforeTraining as e:\n"
      "  print('stopped', e.signal_name, e.exit_code, flush=True)\n")
  proc = subprocess.run([sys.executable, "-c", script], env=cli_env(),
                        capture_output=True, text=True, timeout=200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split("\n")[:2] == [
      "start-up went on SIGTERM", "stopped SIGTERM 143"], proc.stdout
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert not (workdir / "lock.json").exists()


def _walk(root):
  """Relative names of the files under an epath folder (no `**` on gs://)."""
  out, folders = [], [root]
  while folders:
    for p in folders.pop().iterdir():
      if p.is_dir():
        folders.append(p)
      else:
        out.append(str(p.relative_to(root)))
  return sorted(out)


def test_damaged_checkpoint_on_gcs_is_skipped_and_set_aside(gcs, caplog):  # noqa: F811
  from fcos_jax.train import loop
  directory = f"gs://{BUCKET}/damaged_run/checkpoints"
  manager = checkpoint.make_manager(directory, keep=10, async_save=False)
  saved = {}
  for s in (1, 2):
    params = {"w": jax.random.normal(jax.random.key(s), (16, 8))}
    checkpoint.save(manager, s, {"params": params, "step": jnp.int32(s)},
                    {"step": s})
    saved[s] = jax.device_get(params)
  manager.wait_until_finished()
  manager.close()
  storage.path(f"{directory}/2/state/manifest.ocdbt").unlink()
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoint.abstract_like(saved[1], sharding)
  with caplog.at_level(logging.WARNING):
    params, step = checkpoint.restore_params(directory, None, abstract)
  assert step == 1
  np.testing.assert_array_equal(np.asarray(params["w"]), saved[1]["w"])
  assert any(f"{directory}/2 cannot be restored" in r.getMessage()
             for r in caplog.records)
  src = storage.path(f"{directory}/2")
  names = _walk(src)
  dst = storage.path(f"gs://{BUCKET}/damaged_run/checkpoints_damaged/2")
  loop._move_tree(src, dst)
  assert not storage.exists(f"{directory}/2/_CHECKPOINT_METADATA")
  assert _walk(dst) == names and names
