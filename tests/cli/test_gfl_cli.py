"""GFL through the real commands: configs/synthetic_gfl_cpu.py trains with
train.py (a tiny run) and evaluate.py scores its checkpoint; the COCO
config builds the `gfl` preset."""

import json

import pytest

from cli_runs import run, tiny_args

GFL_CONFIG = "configs/synthetic_gfl_cpu.py"


def test_gfl_configs_build_the_gfl_parts():
  from fcos_jax.configs import gfl_r50_1x, synthetic_cpu, synthetic_gfl_cpu
  from fcos_jax.model import config as model_presets
  from fcos_jax.model.config_dict import model_config_from
  coco = model_config_from(gfl_r50_1x.get_config().model)
  assert coco == model_presets.gfl(num_classes=80)
  assert gfl_r50_1x.PUBLISHED_AP == 40.2
  main = model_config_from(synthetic_cpu.get_config().model)
  syn = model_config_from(synthetic_gfl_cpu.get_config().model)
  # Only the parts change: the architecture and inference are the main
  # command's; the assigner too until ATSS is registered.
  assert syn.quality.name == "gfl_joint" and syn.loss.name == "gfl"
  expected = main.replace(quality=syn.quality, loss=syn.loss,
                          assign=syn.assign)
  assert syn == expected
  if "atss" not in model_presets.ASSIGNERS:
    assert syn.assign == main.assign


@pytest.mark.slow
def test_gfl_trains_and_evaluates_through_the_clis(tmp_path):
  workdir = tmp_path / "gfl"
  proc = run("train.py", workdir, tiny_args(tmp_path, steps=4),
             config=GFL_CONFIG)
  assert "loss_dfl" in proc.stderr and "loss_ctr" not in proc.stderr
  assert "Average Precision" in proc.stdout
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["model"]["quality"]["name"] == "gfl_joint"

  out = tmp_path / "eval_gfl"  # Training's own eval/ files stay as written.
  proc = run("evaluate.py", workdir, tiny_args(tmp_path) + [
      "--checkpoint=4", "--config.model.inference.score_thresh=0.0",
      f"--out={out}"], config=GFL_CONFIG)
  assert "COCO bbox evaluation at step 4" in proc.stdout
  metrics = json.loads((out / "metrics_step4.json").read_text())
  assert metrics["num_images"] == 8 and 0 <= metrics["AP"] <= 1
  detections = json.loads((out / "detections_step4.json").read_text())
  assert detections and all(0 < d["score"] <= 1 for d in detections)
