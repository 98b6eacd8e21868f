"""VFNet R-50 1x on COCO (mmdetection configs/vfnet/vfnet_r50_fpn_1x_coco.py):
41.6 box AP published by mmdetection (published, not measured here).

The `vfnet` preset (fcos_jax/model/config.py): torchvision-layout
ResNet-50, P3-P7 with P6 from P5, 3-conv GN towers, the VFNet head
(initial box exp(scale x) * 8 strides, star deformable convs, refined
box), ATSS assignment (topk 9), Varifocal Loss (alpha 0.75, gamma 2,
IoU-weighted) + GIoU 1.5 on the initial and 2.0 on the refined box; score
sigmoid(cls) > 0.05, 1000 per level, NMS 0.6, 100 detections. The
warm-up is mmdetection's (500 steps, linear from 0.1); the schedule, batch,
resize and ImageNet start are the defaults (configs/default.py: 90k steps
of batch 16, LR 0.01, decay at 60k and 80k, bias LR x2 without decay;
mmdetection's 1x is 12 epochs of batch 16, about 88k steps, decay after
epochs 8 and 11, with the same LR, bias and decay settings).

  fcos-train --config configs/vfnet_r50_1x.py --workdir runs/vfnet_r50_1x \
    --config.init_backbone=resnet50.pth
"""

from fcos_jax.configs import default
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict

PUBLISHED_AP = 41.6  # mmdetection's model zoo; not measured here.


def get_config():
  config = default.get_config()
  config.model = model_config_dict(model_presets.vfnet(num_classes=80))
  config.optim.warmup_method = "linear"  # mmdetection's lr_config.
  config.optim.warmup_factor = 0.1
  config.optim.warmup_steps = 500
  return config
