"""FCOS_R_50_FPN_1x: the paper's ResNet-50 model, without the improvements. P6
comes from P5: its official config sets USE_C5: False. 1x schedule, batch
16, single-scale training (short side 800). The backbone starts from the
Detectron ImageNet pickle R-50.pkl: --config.init_backbone=PATH/R-50.pkl.
"""

from fcos_jax.configs.zoo import common
from fcos_jax.model import config as presets

# COCO minival AP of the released model: published, not measured here.
PUBLISHED_AP = 37.1


def get_config():
  model = presets.paper(
      num_classes=80, p6_from="p5")
  return common.zoo_config(model, "1x", multi_scale=False, batch=16)
