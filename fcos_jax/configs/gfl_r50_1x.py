"""GFL R-50 1x on COCO (mmdetection configs/gfl/gfl_r50_fpn_1x_coco.py):
40.2 box AP published by mmdetection (published, not measured here).

The `gfl` preset (fcos_jax/model/config.py): QFL (beta 2), DFL (weight
0.25) over 0..16 bins, GIoU (weight 2.0) weighted by the class score, no
centre-ness; ATSS assignment (topk 9) when the `atss` assigner is
registered, else FCOS's rule. The schedule, batch, resize and ImageNet
start are the defaults (configs/default.py: 90k steps of batch 16, LR
0.01, the official FCOS 1x schedule; mmdetection's 1x is 12 epochs of batch
16 with 500 warm-up steps).

  fcos-train --config configs/gfl_r50_1x.py --workdir runs/gfl_r50_1x \
    --config.init_backbone=resnet50.pth
"""

from fcos_jax.configs import default
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict

PUBLISHED_AP = 40.2  # mmdetection's model zoo; not measured here.


def get_config():
  config = default.get_config()
  config.model = model_config_dict(model_presets.gfl(num_classes=80))
  return config
