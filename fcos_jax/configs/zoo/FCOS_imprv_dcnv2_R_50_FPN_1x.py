"""FCOS_imprv_dcnv2_R_50_FPN_1x: ResNet-50 with DCNv2 in res3-res5 and in the
last conv of each head tower. 1x schedule, batch 16, single-scale training
(short side 800). The backbone starts from the Detectron ImageNet pickle
R-50.pkl: --config.init_backbone=PATH/R-50.pkl.
"""

from fcos_jax.configs.zoo import common
from fcos_jax.model import config as presets

# COCO minival AP of the released model: published, not measured here.
PUBLISHED_AP = 42.3


def get_config():
  model = presets.official(
      num_classes=80, dcn_stages=(3, 4, 5), head_dcn=True)
  return common.zoo_config(model, "1x", multi_scale=False, batch=16)
