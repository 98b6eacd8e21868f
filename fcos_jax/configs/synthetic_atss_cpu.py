"""The main command's synthetic CPU run (configs/synthetic_cpu.py: model,
data, schedule) with the `atss` preset's parts: ATSS assignment (k = 9,
anchors 8 strides wide; no size ranges, no centre sampling) and the ATSS
loss (centre-ness-weighted GIoU, weight 2).

  python train.py --config configs/synthetic_atss_cpu.py --workdir /tmp/fcos_atss
"""

from fcos_jax.configs import synthetic_cpu
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict, model_config_from


def get_config():
  config = synthetic_cpu.get_config()
  detector = model_config_from(config.model)
  atss = model_presets.atss()
  config.model = model_config_dict(detector.replace(
      assign=atss.assign, loss=atss.loss, quality=atss.quality))
  return config
