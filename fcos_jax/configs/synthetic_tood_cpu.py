"""TOOD on the synthetic shapes, on a CPU: the main command's model, data
and schedule (configs/synthetic_cpu.py) with the `tood` preset's parts:
the T-head (its shared convs are the main command's 2 tower convs), TAL
(topk 13, alpha 1, beta 6) after a warm-up of the first third of the
steps (TOOD's 4 of 12 epochs) with ATSS (k = 9, anchors 8 strides wide)
and focal loss, QFL + GIoU weighted by the alignment targets. Its boxes
are exp(...) in pixels, so norm_reg_targets is off; everything else
(widths, location offset) stays the main command's.

  python train.py --config configs/synthetic_tood_cpu.py --workdir /tmp/tood
"""

from fcos_jax.configs import synthetic_cpu
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_from, model_config_dict

INITIAL_FRACTION = 4 / 12  # TOOD: initial_epoch 4 of a 12-epoch schedule.


def get_config():
  config = synthetic_cpu.get_config()
  detector = model_config_from(config.model)
  tood = model_presets.tood(
      initial_steps=round(config.num_train_steps * INITIAL_FRACTION))
  config.model = model_config_dict(detector.replace(
      quality=tood.quality, loss=tood.loss, assign=tood.assign,
      norm_reg_targets=False))
  return config
