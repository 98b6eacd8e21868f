"""FCOS_bn_bs16_MNV2_FPN_1x: MobileNetV2 body (C3-C5 of 32, 96, 320 channels),
all of it trained (FREEZE_CONV_BODY_AT: 0). Its config has no FCOS section,
so the defaults of the official code apply: the paper's head and losses with
P6 from P5. The backbone's BatchNorm trains with batch statistics
(backbone_norm='bn'): here over the global batch of 16 (SyncBN); the
official run took them per GPU. 1x schedule, batch 16, single-scale training (short side
800). The backbone starts from the official MobileNetV2 ImageNet weights
(mobilenet_v2-ecbe2b5.pth, tonylins/pytorch-mobilenet-v2 names):
--config.init_backbone=PATH/mobilenet_v2-ecbe2b5.pth.
"""

from fcos_jax.configs.zoo import common
from fcos_jax.model import config as presets

# COCO minival AP of the released model: published, not measured here.
PUBLISHED_AP = 31.0


def get_config():
  model = presets.paper(
      num_classes=80, backbone="mobilenet_v2", bn_eps=1e-5, freeze_at=0,
      backbone_norm="bn",
      p6_from="p5")
  return common.zoo_config(model, "1x", multi_scale=False, batch=16,
                           init_format="mobilenet_v2_official")
