"""FCOS R-50 1x with ATSS assignment, as sfzhang15/ATSS atss_R_50_FPN_1x
(published: 39.3 AP on COCO val2017; published, not measured here), in its
FCOS form (regressing from the point): `atss` preset, k = 9 candidates per
level, anchors 8 strides wide, GIoU weighted by centre-ness targets with
weight 2, centre-ness on the box tower, no centre sampling or size ranges.
The default recipe: 90k steps, batch 16."""

from fcos_jax.configs import default
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict

PUBLISHED_AP = 39.3  # sfzhang15/ATSS README, ATSS_R_50_FPN_1x.


def get_config():
  config = default.get_config()
  backbone = {k: config.model[k] for k in (
      "stride_in_1x1", "bn_eps", "input_bgr", "input_range", "pixel_mean",
      "pixel_std")}
  config.model = model_config_dict(model_presets.atss(num_classes=80, **backbone))
  return config
