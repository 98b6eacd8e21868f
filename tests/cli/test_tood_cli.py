"""TOOD through the real commands: configs/synthetic_tood_cpu.py trains
with train.py (a tiny run through the warm-up into TAL) and evaluate.py
scores its checkpoint; both TOOD configs build the `tood` parts and pass
the run-config checks."""

import re

import pytest

from cli_runs import train_and_evaluate

TOOD_CONFIG = "configs/synthetic_tood_cpu.py"


def test_tood_configs_build_the_tood_parts():
  from fcos_jax.configs import synthetic_cpu, synthetic_tood_cpu, tood_r50_1x
  from fcos_jax.model import config as model_presets
  from fcos_jax.model.config_dict import model_config_from
  from fcos_jax.run.validate import validate
  coco = model_config_from(tood_r50_1x.get_config().model)
  assert coco == model_presets.tood(num_classes=80)
  assert coco.assign.initial_steps == 30000  # 4 of 12 epochs of 90k steps.
  assert tood_r50_1x.PUBLISHED_AP == 42.4
  optim = tood_r50_1x.get_config().optim
  assert (optim.warmup_method, optim.warmup_factor, optim.warmup_steps,
          optim.base_lr) == ("linear", 0.001, 500, 0.01)
  main_config = synthetic_cpu.get_config()
  main = model_config_from(main_config.model)
  syn = model_config_from(synthetic_tood_cpu.get_config().model)
  assert (syn.quality.name, syn.loss.name, syn.assign.name) == (
      "tood", "tood", "tal")
  assert syn.assign.initial_steps == round(main_config.num_train_steps / 3)
  assert syn == main.replace(quality=syn.quality, loss=syn.loss,
                             assign=syn.assign, norm_reg_targets=False)
  validate(tood_r50_1x.get_config())
  validate(synthetic_tood_cpu.get_config())


@pytest.mark.slow
def test_tood_trains_and_evaluates_through_the_clis(tmp_path):
  proc, recorded = train_and_evaluate(tmp_path, TOOD_CONFIG, "tood",
                            train_args=["--config.model.assign.initial_steps=2"])
  # Steps 1-2 are the warm-up (ATSS, focal loss), steps 3-4 TAL.
  initial = re.findall(r"\[(\d+)\].*?initial=([\d.e+-]+)", proc.stderr)
  assert {int(step): float(v) for step, v in initial} == {
      1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}, proc.stderr[-3000:]
  assert "loss_ctr" not in proc.stderr
  assert recorded["model"]["assign"]["name"] == "tal"
  assert recorded["model"]["assign"]["initial_steps"] == 2
