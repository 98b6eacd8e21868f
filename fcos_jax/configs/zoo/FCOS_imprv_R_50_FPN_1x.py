"""FCOS_imprv_R_50_FPN_1x: ResNet-50 with the improvements (centerness on the
box tower, centre sampling, GIoU, normalised targets). 1x schedule, batch
16, single-scale training (short side 800). The backbone starts from the
Detectron ImageNet pickle R-50.pkl: --config.init_backbone=PATH/R-50.pkl.
"""

from fcos_jax.configs.zoo import common
from fcos_jax.model import config as presets

# COCO minival AP of the released model: published, not measured here.
PUBLISHED_AP = 38.7


def get_config():
  model = presets.official(
      num_classes=80)
  return common.zoo_config(model, "1x", multi_scale=False, batch=16)
