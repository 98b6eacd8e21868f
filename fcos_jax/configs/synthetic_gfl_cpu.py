"""GFL on the synthetic shapes, on a CPU: the main command's model, data
and schedule (configs/synthetic_cpu.py) with only the model parts changed
to the `gfl` preset's: the joint class-IoU score trained by QFL, a
distribution over 0..16 strides per side (DFL) with GIoU, no centre-ness;
ATSS assignment when the `atss` assigner is registered, else the main
command's FCOS rule (its size ranges for 256-px images).

  python train.py --config configs/synthetic_gfl_cpu.py --workdir /tmp/gfl
"""

from fcos_jax.configs import synthetic_cpu
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict, model_config_from


def get_config():
  config = synthetic_cpu.get_config()
  detector = model_config_from(config.model)
  gfl = model_presets.gfl()
  parts = dict(quality=gfl.quality, loss=gfl.loss)
  if gfl.assign.name != "fcos":  # ATSS, once registered.
    parts["assign"] = gfl.assign
  config.model = model_config_dict(detector.replace(**parts))
  return config
