"""The real command-line jobs, end to end, on a tiny synthetic dataset.

Each run is a subprocess of train.py / evaluate.py (as a user runs them),
bounded in time; a killed run's process is ours and killed by pid.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_runs import ROOT, TIMEOUT_S, final_params, run, tiny_args


def _scalar_tags(logdir):
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(logdir))
  events.Reload()
  return set(events.Tags()["scalars"]) | set(events.Tags()["tensors"])


@pytest.mark.slow
def test_train_then_evaluate_through_the_clis(tmp_path):
  workdir = tmp_path / "run"
  proc = run("train.py", workdir, tiny_args(
      tmp_path, profile_steps=2, profile_first_step=2))
  log = proc.stderr
  assert "loss_cls" in log and "images_per_s" in log and "ETA" in log
  assert "Parameters: backbone: " in log and " frozen" in log
  assert "Average Precision" in proc.stdout
  # clu's writer: the losses, LR and throughput as TensorBoard scalars.
  assert _scalar_tags(workdir / "tensorboard") >= {
      "loss", "loss_cls", "loss_reg", "loss_ctr", "lr", "images_per_s",
      "eval/AP"}
  # clu's Profile: a trace where TensorBoard's profile plugin looks.
  traces = list((workdir / "tensorboard" / "plugins" / "profile").glob(
      "*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert (workdir / "checkpoints" / "6").is_dir()

  # Every candidate kept, so that a 4-step model has detections to check.
  proc = run("evaluate.py", workdir, tiny_args(tmp_path) + [
      "--checkpoint=4", "--config.model.inference.score_thresh=0.0"])
  assert "COCO bbox evaluation at step 4" in proc.stdout
  # Another config than the recorded one: its own folder under eval/.
  (out,) = (workdir / "eval").glob("val_step4_*")
  metrics = json.loads((out / "metrics_step4.json").read_text())
  assert set(metrics) >= {"AP", "AP50", "ARl"} and metrics["num_images"] == 8
  assert all(0 <= metrics[k] <= 1 for k in ("AP", "AP50"))
  detections = json.loads((out / "detections_step4.json").read_text())
  val = json.loads((tmp_path.parent / "synthetic_tiny" / "val.json").read_text())
  image_ids = {im["id"] for im in val["images"]}
  category_ids = {c["id"] for c in val["categories"]}
  assert len(detections) >= len(image_ids)
  for d in detections:
    assert d["image_id"] in image_ids and d["category_id"] in category_ids
    assert len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and d["bbox"][3] >= 0
    assert 0 < d["score"] <= 1


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
  steps = 8
  ref = tmp_path / "uninterrupted"
  run("train.py", ref, tiny_args(tmp_path, steps, eval_at_end=False))
  ref_step, ref_params = final_params(ref)
  assert ref_step == steps

  killed = tmp_path / "killed"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
             TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, str(ROOT / "train.py"), "--config",
         str(ROOT / "configs/synthetic_cpu.py"), "--workdir", str(killed)
         ] + tiny_args(tmp_path, steps, eval_at_end=False)
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + TIMEOUT_S
    # Kill hard once a mid-run checkpoint exists (step 4 of 8).
    while not (killed / "checkpoints" / "4").is_dir():
      assert proc.poll() is None, "training ended before it could be killed"
      assert time.time() < deadline, "no checkpoint in time"
      time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait(timeout=60)
  interrupted_step = max(int(p.name) for p in (killed / "checkpoints").iterdir()
                         if p.name.isdigit())
  assert interrupted_step < steps

  proc = run("train.py", killed, tiny_args(tmp_path, steps, eval_at_end=False))
  assert "Resumed from" in proc.stderr
  step, params = final_params(killed)
  assert step == steps and params.keys() == ref_params.keys()
  for name, value in ref_params.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)


@pytest.mark.slow
def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
  workdir = tmp_path / "nan"
  # Two tiny warm-up steps, then an absurd LR makes the loss non-finite.
  args = tiny_args(tmp_path, 8, checkpoint_every_steps=1, eval_at_end=False) + [
      "--config.optim.base_lr=1e12", "--config.optim.warmup_factor=1e-15",
      "--config.optim.warmup_method=constant"]
  proc = run("train.py", workdir, args, check=False)
  assert proc.returncode != 0
  assert "NaN/inf" in proc.stderr and "is intact" in proc.stderr
  good, params = final_params(workdir)
  assert 1 <= good < 8
  assert all(np.isfinite(v).all() for v in params.values())


def test_config_typos_are_refused(tmp_path):
  proc = run("train.py", tmp_path / "typo", ["--config.optim.base_lrr=0.1"],
             check=False)
  assert proc.returncode != 0 and "base_lrr" in proc.stderr
  proc = run("train.py", tmp_path / "typo", ["--config.model.depth=fifty"],
             check=False)
  assert proc.returncode != 0 and "depth" in proc.stderr


def test_model_config_refuses_unknown_and_bad_values():
  from fcos_jax.model.config import ModelConfig
  with pytest.raises(ValueError, match="centreness_on"):
    ModelConfig.from_dict({"centreness_on": "reg"})
  with pytest.raises(ValueError, match="reg_loss"):
    ModelConfig.from_dict({"reg_loss": "smooth_l1"})
  assert ModelConfig.from_dict({"preset": "paper"}).loss.reg_loss == "iou"
