"""torchvision's fcos_resnet50_fpn preset (39.2 AP with its 26-epoch recipe):
no Scale, anchors at j*s with s = canvas // cells, open size ranges,
unweighted GIoU, score threshold 0.2 on sqrt(prob * ctr). Trains that
variant on the 80 COCO classes; torchvision's pretrained 91-slot COCO weights
become a workdir of this config with
`python -m fcos_jax.convert --torchvision PTH --workdir DIR`."""

from fcos_jax.configs import default
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict


def get_config():
  config = default.get_config()
  config.model = model_config_dict(model_presets.torchvision(num_classes=80))
  return config
