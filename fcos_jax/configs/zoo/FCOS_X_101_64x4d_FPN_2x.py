"""FCOS_X_101_64x4d_FPN_2x: the paper's ResNeXt-101 64x4d model (P6 from P5, as
its config). 2x schedule, batch 16, multi-scale training (short side drawn
from [640, 800]). The backbone starts from the Detectron ImageNet pickle
X-101-64x4d.pkl: --config.init_backbone=PATH/X-101-64x4d.pkl.
"""

from fcos_jax.configs.zoo import common
from fcos_jax.model import config as presets

# COCO minival AP of the released model: published, not measured here.
PUBLISHED_AP = 43.0


def get_config():
  model = presets.paper(
      num_classes=80, depth=101, groups=64, width_per_group=4,
      stride_in_1x1=False, p6_from="p5")
  return common.zoo_config(model, "2x", multi_scale=True, batch=16)
