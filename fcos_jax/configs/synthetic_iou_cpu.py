"""The main command's synthetic CPU run (configs/synthetic_cpu.py: model,
data, schedule) with the `iou` preset's parts: the IoU quality branch and
the GIoU loss unweighted over N_pos (AdelaiDet BOX_QUALITY "iou").

  python train.py --config configs/synthetic_iou_cpu.py --workdir /tmp/fcos_iou
"""

from fcos_jax.configs import synthetic_cpu
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict, model_config_from


def get_config():
  config = synthetic_cpu.get_config()
  detector = model_config_from(config.model)
  iou = model_presets.iou()
  config.model = model_config_dict(detector.replace(
      quality=iou.quality, reg_weighting=iou.loss.reg_weighting))
  return config
