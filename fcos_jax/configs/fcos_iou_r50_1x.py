"""FCOS R-50 1x with the IoU quality branch, as AdelaiDet's
FCOS_R_50_1x_iou (published: 39.4 AP on COCO val2017; published, not
measured here): the official model with the quality branch predicting the
IoU of its decoded box (`iou` preset: BCE against the detached IoU, GIoU
unweighted over N_pos). The default recipe: 90k steps, batch 16."""

from fcos_jax.configs import default
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict

PUBLISHED_AP = 39.4  # AdelaiDet configs/FCOS-Detection/README.md.


def get_config():
  config = default.get_config()
  backbone = {k: config.model[k] for k in (
      "stride_in_1x1", "bn_eps", "input_bgr", "input_range", "pixel_mean",
      "pixel_std")}
  config.model = model_config_dict(model_presets.iou(num_classes=80, **backbone))
  return config
