"""FCOS_R_101_FPN_2x: the paper's ResNet-101 model (P6 from P5, as its config).
2x schedule, batch 16, multi-scale training (short side drawn from [640,
800]). The backbone starts from the Detectron ImageNet pickle R-101.pkl:
--config.init_backbone=PATH/R-101.pkl.
"""

from fcos_jax.configs.zoo import common
from fcos_jax.model import config as presets

# COCO minival AP of the released model: published, not measured here.
PUBLISHED_AP = 41.4


def get_config():
  model = presets.paper(
      num_classes=80, depth=101, p6_from="p5")
  return common.zoo_config(model, "2x", multi_scale=True, batch=16)
