"""mmdetection's ATSS R-50 1x on COCO (configs/atss/atss_r50_fpn_1x_coco.py):
39.4 box AP published by mmdetection (published, not measured here).

The `atss_anchor` preset (fcos_jax/model/config.py): the anchor-based
ATSSHead (box `anchor_deltas`: DeltaXYWH deltas, stds 0.1, 0.1, 0.2, 0.2,
from one 8-stride square anchor per location), torchvision-layout
ResNet-50 with RGB ImageNet input, P6 from P5 and no ReLU before P7, ATSS
assignment (topk 9), focal loss + GIoU (weight 2, weighted by the
centre-ness targets) on the decoded boxes + centre-ness BCE; score > 0.05,
NMS 0.6. The schedule, batch, resize and ImageNet start are the defaults
(configs/default.py: 90k steps of batch 16, LR 0.01; mmdetection's 1x is 12
epochs of batch 16 with 500 warm-up steps). configs/atss_r50_1x.py is the
ATSS repository's point-regression variant instead.

  fcos-train --config configs/atss_anchor_r50_1x.py \
    --workdir runs/atss_anchor_r50_1x --config.init_backbone=resnet50.pth
"""

from fcos_jax.configs import default
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict

PUBLISHED_AP = 39.4  # mmdetection's model zoo; not measured here.


def get_config():
  config = default.get_config()
  config.model = model_config_dict(model_presets.atss_anchor(num_classes=80))
  return config
