"""FCOS_R_50_FPN_1x as in the paper (37.1 AP): IoU loss, exp regression,
centerness on the class tower, P6 from C5, no centre sampling."""

from fcos_jax.configs import default
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict


def get_config():
  config = default.get_config()
  backbone = {k: config.model[k] for k in (
      "stride_in_1x1", "bn_eps", "input_bgr", "input_range", "pixel_mean",
      "pixel_std")}
  config.model = model_config_dict(model_presets.paper(num_classes=80, **backbone))
  return config
