"""VFNet through the real commands: configs/synthetic_vfnet_cpu.py trains
with train.py (a tiny run) and evaluate.py scores its checkpoint; both
VFNet configs build the `vfnet` parts and pass the run-config checks."""


import pytest

from cli_runs import train_and_evaluate

VFNET_CONFIG = "configs/synthetic_vfnet_cpu.py"


def test_vfnet_configs_build_the_vfnet_parts():
  from fcos_jax.configs import synthetic_cpu, synthetic_vfnet_cpu, vfnet_r50_1x
  from fcos_jax.model import config as model_presets
  from fcos_jax.model.config_dict import model_config_from
  from fcos_jax.run.validate import validate
  coco = model_config_from(vfnet_r50_1x.get_config().model)
  assert coco == model_presets.vfnet(num_classes=80)
  assert vfnet_r50_1x.PUBLISHED_AP == 41.6
  optim = vfnet_r50_1x.get_config().optim
  assert (optim.warmup_method, optim.warmup_factor, optim.warmup_steps,
          optim.base_lr) == ("linear", 0.1, 500, 0.01)
  main = model_config_from(synthetic_cpu.get_config().model)
  syn = model_config_from(synthetic_vfnet_cpu.get_config().model)
  # The parts change, and the box unit (exp in pixels); the rest of the
  # architecture and inference are the main command's.
  assert (syn.quality.name, syn.loss.name, syn.assign.name) == (
      "vfnet", "vfnet", "atss")
  assert syn == main.replace(quality=syn.quality, loss=syn.loss,
                             assign=syn.assign, norm_reg_targets=False)
  validate(vfnet_r50_1x.get_config())
  validate(synthetic_vfnet_cpu.get_config())


@pytest.mark.slow
def test_vfnet_trains_and_evaluates_through_the_clis(tmp_path):
  proc, recorded = train_and_evaluate(tmp_path, VFNET_CONFIG, "vfnet")
  assert "loss_reg_refine" in proc.stderr and "loss_ctr" not in proc.stderr
  assert recorded["model"]["loss"]["name"] == "vfnet"
