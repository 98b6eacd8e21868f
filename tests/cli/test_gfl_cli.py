"""GFL through the real commands: configs/synthetic_gfl_cpu.py trains with
train.py (a tiny run) and evaluate.py scores its checkpoint; the COCO
config builds the `gfl` preset."""


import pytest

from cli_runs import train_and_evaluate

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
  proc, _ = train_and_evaluate(tmp_path, GFL_CONFIG, "gfl_joint")
  assert "loss_dfl" in proc.stderr and "loss_ctr" not in proc.stderr
