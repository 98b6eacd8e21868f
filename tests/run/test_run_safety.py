"""What a run keeps and how it fails, through the real CLIs: the config
record is never overwritten, resuming with a changed config names the field,
an error mid-run (with a checkpoint in flight) or a full disk is one clear
error with nothing half-written left, evaluation ignores the optimizer
config, and the best-by-AP checkpoints are kept.
"""

import json
import os
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest
from cli_runs import checkpoint_steps, run, tiny_args

from coco_files import write_coco


def _one_error_line(proc):
  err = proc.stderr
  assert proc.returncode == 1, err[-3000:]
  assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
  assert "sys.meta_path" not in err
  lines = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, err[-3000:]
  return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 4-step run (its workdir and flags)."""
  tmp = tmp_path_factory.mktemp("trained")
  args = tiny_args(tmp, 4, eval_at_end=False)
  run("train.py", tmp / "run", args)
  return tmp / "run", args


@pytest.mark.slow
def test_resume_with_changed_architecture_is_refused_and_record_kept(trained):
  workdir, args = trained
  record = (workdir / "config.json").read_bytes()
  proc = run("train.py", workdir, args + ["--config.model.head_convs=2",
                                          "--config.num_train_steps=8"],
             check=False)
  line = _one_error_line(proc)
  assert "model.head_convs: 1 -> 2" in line and "cannot change" in line
  assert (workdir / "config.json").read_bytes() == record
  assert sorted(p.name for p in workdir.glob("config*.json")) == ["config.json"]


@pytest.mark.slow
def test_resume_with_longer_schedule_needs_allow_config_change(trained):
  workdir, args = trained
  record = (workdir / "config.json").read_bytes()
  longer = args + ["--config.num_train_steps=6"]
  line = _one_error_line(run("train.py", workdir, longer, check=False))
  assert "num_train_steps: 4 -> 6" in line and "allow_config_change" in line
  proc = run("train.py", workdir, longer + ["--config.allow_config_change=True"])
  assert "Config changed on resume" in proc.stderr
  assert checkpoint_steps(workdir)[-1] == 6
  assert (workdir / "config.json").read_bytes() == record
  later = sorted(workdir.glob("config.*Z.json"))
  assert len(later) == 1
  assert json.loads(later[0].read_text())["num_train_steps"] == 6


@pytest.mark.slow
def test_evaluate_ignores_optimizer_fields(trained):
  workdir, args = trained
  before = checkpoint_steps(workdir)
  # Another optimizer chain (no clipping) and other hyper-parameters: the
  # train state's tree differs, the parameters do not.
  proc = run("evaluate.py", workdir, args + [
      "--checkpoint=4", "--config.optim.grad_clip_norm=0.0",
      "--config.optim.momentum=0.5", "--config.optim.base_lr=3.0"])
  assert "COCO bbox evaluation at step 4" in proc.stdout
  # Read-only: evaluation wrote no checkpoint and removed none.
  assert checkpoint_steps(workdir) == before


@pytest.mark.slow
def test_categories_changed_on_resume_are_refused(trained, tmp_path):
  workdir, args = trained
  categories = workdir / "categories.json"
  saved = categories.read_bytes()
  edited = json.loads(saved)
  edited["categories"][0]["id"] = 99
  categories.write_text(json.dumps(edited))
  try:
    line = _one_error_line(run("train.py", workdir, args, check=False))
  finally:
    categories.write_bytes(saved)
  assert "99" in line and "categories" in line


def _bad_image_dataset(tmp_path):
  """24 images of 128 px; one that training reads at step 3 is unreadable,
  so steps 1-2 run (and are checkpointed) before the error."""
  from fcos_jax.data.config import default_data_config
  from fcos_jax.data.pipeline import build_train_dataset
  js, im = write_coco(str(tmp_path / "bad_data"),
                      [(128, 128, [(10, 10, 60, 70, 1, 0)])] * 24)
  c = default_data_config()
  c.source, c.coco.train_json, c.coco.train_images = "coco_format", js, im
  c.coco.val_json, c.coco.val_images = js, im
  c.min_size, c.max_size, c.canvases, c.max_boxes = 128, 128, ((128, 128),), 32
  it = build_train_dataset(c, 8, 0, 1, seed=0)  # The run's order (seed 0).
  third = [next(it) for _ in range(3)][-1]
  image_id = int(third["image_id"][0])
  name = json.load(open(js))["images"][[i["id"] for i in json.load(
      open(js))["images"]].index(image_id)]["file_name"]
  with open(os.path.join(im, name), "wb") as f:
    f.write(b"not an image")
  return js, im, name


@pytest.mark.slow
def test_error_mid_run_with_checkpoint_in_flight_surfaces_alone(tmp_path):
  js, im, bad = _bad_image_dataset(tmp_path)
  workdir = tmp_path / "run"
  args = tiny_args(tmp_path, 12, checkpoint_every_steps=1,
                   async_checkpointing=True, eval_at_end=False) + [
      "--config.data.source=coco_format", f"--config.data.coco.train_json={js}",
      f"--config.data.coco.train_images={im}", f"--config.data.coco.val_json={js}",
      f"--config.data.coco.val_images={im}", "--config.model.num_classes=2"]
  line = _one_error_line(run("train.py", workdir, args, check=False))
  assert bad in line and "skip_bad_examples" in line
  steps = checkpoint_steps(workdir)
  assert steps, "the steps before the bad image were checkpointed"
  assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.fixture
def tiny_disk(tmp_path):
  """A 1 MiB tmpfs (root can mount one here; CI runs as root)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs",
                         str(mount)], capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_full_disk_is_one_clear_error(tmp_path, tiny_disk):
  workdir = tiny_disk / "run"
  args = tiny_args(tmp_path, 6, eval_at_end=False, async_checkpointing=True)
  line = _one_error_line(run("train.py", workdir, args, check=False))
  assert "Could not write a checkpoint" in line and str(workdir) in line
  assert "No space left" in line or "RESOURCE_EXHAUSTED" in line, line


def test_best_checkpoints_are_kept_beside_the_latest(tmp_path):
  from fcos_jax.run import checkpoint
  manager = checkpoint.make_manager(str(tmp_path / "ckpt"), keep=1,
                                    keep_best=1, async_save=False)
  state = {"w": jnp.zeros(3)}
  for step, ap in [(1, 0.5), (2, 0.9), (3, 0.1), (4, None)]:
    metrics = None if ap is None else {"AP": ap}
    assert checkpoint.save(manager, step, state, {"step": step}, metrics)
  manager.wait_until_finished()
  assert manager.all_steps() == [2, 4]  # The best AP and the latest.
  assert not checkpoint.save(manager, 4, state, {"step": 4})  # Never twice.


def test_config_record_appends(tmp_path):
  import ml_collections
  from fcos_jax import errors
  from fcos_jax.run import record
  c = ml_collections.ConfigDict({"num_train_steps": 4, "model": {"depth": 18}})
  first = record.write(str(tmp_path), c)
  c.num_train_steps = 8
  second = record.write(str(tmp_path), c)
  assert first.endswith("config.json") and second != first
  assert record.records(str(tmp_path)) == [first, second]
  assert record.read_latest(str(tmp_path))["num_train_steps"] == 8
  with pytest.raises(errors.ConfigChangeError, match="model.depth: 18 -> 50"):
    record.check_resume({"num_train_steps": 8, "model": {"depth": 18}},
                            ml_collections.ConfigDict(
                                {"num_train_steps": 8, "model": {"depth": 50}}),
                            first)
  np.testing.assert_equal(json.loads(open(first).read())["num_train_steps"], 4)


def test_unwritable_workdir_is_one_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  line = _one_error_line(run("train.py", blocker / "run",
                             tiny_args(tmp_path, 2), check=False))
  assert str(blocker / "run") in line and "NotADirectoryError" in line
  assert blocker.read_text() == "not a folder"


def test_workdir_is_absolute_and_never_empty(tmp_path, monkeypatch):
  """orbax writes only to absolute paths: a relative --workdir (or ~) is
  made absolute once, in Run; an empty one is refused (it would make the
  current folder a run)."""
  from fcos_jax import errors
  from fcos_jax.run import Run
  monkeypatch.chdir(tmp_path)
  assert Run("runs/a").workdir == str(tmp_path / "runs" / "a")
  assert Run("runs/a").checkpoints == str(tmp_path / "runs" / "a" /
                                          "checkpoints")
  assert Run("~/x").workdir == os.path.join(os.path.expanduser("~"), "x")
  assert Run("gs://bucket/run").workdir == "gs://bucket/run"
  for empty in ("", "  ", None):
    with pytest.raises(errors.WorkdirError, match="is empty"):
      Run(empty)


@pytest.mark.slow
def test_relative_workdir_trains_and_checkpoints(tmp_path):
  """train.py --workdir=relrun, run from tmp_path: the checkpoints land in
  tmp_path/relrun (orbax refused the relative path at the first save)."""
  run("train.py", "relrun", tiny_args(tmp_path, 2, eval_at_end=False),
      cwd=tmp_path)
  assert checkpoint_steps(tmp_path / "relrun") == [2]


def test_empty_workdir_is_one_line_and_writes_nothing(tmp_path):
  proc = run("train.py", "", tiny_args(tmp_path, 2), check=False,
             cwd=tmp_path)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  [line] = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert "--workdir='' is empty" in line
  assert sorted(p.name for p in tmp_path.iterdir()) == []
