"""VFNet on the synthetic shapes, on a CPU: the main command's model, data
and schedule (configs/synthetic_cpu.py) with the `vfnet` preset's parts:
the VFNet head (initial box, star deformable convs, refined box; no
centre-ness), ATSS assignment (k = 9, anchors 8 strides wide), Varifocal
Loss with GIoU on both boxes. Its boxes are exp(...) in pixels, so
norm_reg_targets is off; everything else (widths, 2-conv towers, location
offset) stays the main command's.

  python train.py --config configs/synthetic_vfnet_cpu.py --workdir /tmp/vfnet
"""

from fcos_jax.configs import synthetic_cpu
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict, model_config_from


def get_config():
  config = synthetic_cpu.get_config()
  detector = model_config_from(config.model)
  vfnet = model_presets.vfnet()
  config.model = model_config_dict(detector.replace(
      quality=vfnet.quality, loss=vfnet.loss, assign=vfnet.assign,
      norm_reg_targets=False))
  return config
