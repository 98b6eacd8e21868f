"""torchvision's fcos_resnet50_fpn preset (39.2 AP with its 26-epoch recipe):
no Scale, anchors at j*s with s = canvas // cells, open size ranges,
unweighted GIoU, score threshold 0.2 on sqrt(prob * ctr). Trains that
variant on the 80 COCO classes with configs/default.py's recipe;
torchvision's pretrained 91-slot COCO weights (`fcos_resnet50_fpn` of
`fcos_jax.registry`, docs/model_zoo.md) become a workdir of this config with
`fcos-convert --torchvision PTH --workdir DIR` (or `python -m
fcos_jax.cli.convert ...`)."""

from fcos_jax import registry
from fcos_jax.configs import default
from fcos_jax.model.config_dict import model_config_dict


def get_config():
  config = default.get_config()
  config.model = model_config_dict(
      registry.get("fcos_resnet50_fpn", "torchvision").model_config())
  return config
