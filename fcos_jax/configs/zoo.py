"""A released official FCOS (tianzhi0549/FCOS), AdelaiDet (aim-uofa/
AdelaiDet) or mmdetection GFL / VFNet / TOOD / ATSS (open-mmlab/mmdetection)
model as a run config: `--config configs/zoo.py:NAME`, NAME as released (the list, with published AP, weights and licence:
docs/model_zoo.md, generated from `fcos_jax.registry`).

It holds the model's architecture in its source's layout (what the
released weights compute: `fcos_jax.registry.get(NAME).model_config()`,
the converters' `published_config(NAME)`) and the training recipe of its
source config: schedule, batch (the LR 0.01 is the LR at that batch),
training scales and the format of its ImageNet start. Data and evaluation
are configs/default.py's (COCO 2017 from TFDS; evaluation at short side
800, long side at most 1333, as the official test settings).

Convert and evaluate the released weights (--adelaidet for AdelaiDet's,
--mmdet FILE.pth for mmdetection's; only the inference fields, e.g. --config.model.inference.score_thresh, may change):

  fcos-convert --official NAME.pth --config configs/zoo.py:NAME \\
      --workdir runs/NAME && fcos-evaluate --workdir runs/NAME

Train from ImageNet, PATH the file of the model's ImageNet column
(R-50.pkl, ..., mobilenet_v2-ecbe2b5.pth):

  fcos-train --config configs/zoo.py:NAME --workdir runs/NAME \\
      --config.init_backbone=PATH
"""

from fcos_jax import registry
from fcos_jax.configs import default
from fcos_jax.errors import ConfigError
from fcos_jax.model.config_dict import model_config_dict

SOURCES = ("official", "adelaidet", "mmdet")  # torchvision's: configs/torchvision_r50.py


def get_config(name: str = ""):
  if not name:
    raise ConfigError("configs/zoo.py needs a model: configs/zoo.py:NAME, "
                      f"NAME one of {', '.join(registry.names(*SOURCES))}.")
  release = registry.get(name, *SOURCES)
  config = default.get_config()
  config.model = model_config_dict(release.model_config())
  steps, decay = registry.SCHEDULES[release.schedule]
  config.num_train_steps = steps
  config.optim.decay_steps = decay
  config.global_batch_size = release.batch
  config.optim.base_batch_size = release.batch
  config.data.min_size = release.scales
  config.init_backbone_format = release.init_format
  return config
