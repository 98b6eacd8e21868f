"""FCOS_imprv_dcnv2_R_101_FPN_2x: ResNet-101 with DCNv2 in res3-res5 and the
towers' last convs. 2x schedule, batch 16, multi-scale training (short side
drawn from [640, 800]). The backbone starts from the Detectron ImageNet
pickle R-101.pkl: --config.init_backbone=PATH/R-101.pkl.
"""

from fcos_jax.configs.zoo import common
from fcos_jax.model import config as presets

# COCO minival AP of the released model: published, not measured here.
PUBLISHED_AP = 45.6


def get_config():
  model = presets.official(
      num_classes=80, depth=101, dcn_stages=(3, 4, 5), head_dcn=True)
  return common.zoo_config(model, "2x", multi_scale=True, batch=16)
