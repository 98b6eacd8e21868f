"""TOOD R-50 1x on COCO (mmdetection configs/tood/tood_r50_fpn_1x_coco.py):
42.4 box AP published by mmdetection (published, not measured here).

The `tood` preset (fcos_jax/model/config.py): torchvision-layout
ResNet-50, P3-P7 with P6 from P5 and no ReLU before P7, the T-head (6
shared GN convs, task decomposition, score sqrt(sigmoid(cls) *
sigmoid(prob)), box exp(x) * scale strides resampled at learned offsets),
TAL (topk 13, alpha 1, beta 6) with QFL (beta 2) + GIoU 2.0 weighted by
the alignment targets, after a warm-up of the first 4 of 12 epochs
(initial_epoch=4: here a third of the steps) with ATSS (topk 9) and focal
loss; score > 0.05, 1000 per level, NMS 0.6, 100 detections. The LR
warm-up is mmdetection's schedule_1x (500 steps, linear from 0.001); the
schedule, batch, resize and ImageNet start are the defaults
(configs/default.py: 90k steps of batch 16, LR 0.01, decay at 60k and 80k;
mmdetection's 1x is 12 epochs of batch 16, about 88k steps, decay after
epochs 8 and 11). initial_steps is computed from num_train_steps here: a
shorter run set on the command line also sets
--config.model.assign.initial_steps.

  fcos-train --config configs/tood_r50_1x.py --workdir runs/tood_r50_1x \
    --config.init_backbone=resnet50.pth
"""

from fcos_jax.configs import default
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict

PUBLISHED_AP = 42.4  # mmdetection's model zoo; not measured here.
INITIAL_EPOCHS, EPOCHS = 4, 12  # TOOD's warm-up: initial_epoch of 12.


def get_config():
  config = default.get_config()
  initial = round(config.num_train_steps * INITIAL_EPOCHS / EPOCHS)
  config.model = model_config_dict(
      model_presets.tood(num_classes=80, initial_steps=initial))
  config.optim.warmup_method = "linear"  # mmdetection's schedule_1x.
  config.optim.warmup_factor = 0.001
  config.optim.warmup_steps = 500
  return config
