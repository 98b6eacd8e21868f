"""What the model-zoo configs share: the official recipe around a model.

Every released official FCOS model (tianzhi0549/FCOS, maskrcnn-benchmark)
has one file in configs/zoo/, named as the model. Each gives the model's
architecture in the official layout (what its released `.pth` computes, so
`python -m fcos_jax.convert --official` can write it into a workdir), and
the schedule, batch, multi-scale setting and ImageNet initialisation of its
official config (configs/fcos/*.yaml there). The AP each file names is the
one published in the official README (COCO minival), not measured here.

The official layout differs from configs/default.py's: caffe input (BGR
0..255 minus the caffe mean, std 1) and the Detectron ImageNet weights
(MSRA R-50 / R-101 with the stride in the 1x1, FAIR ResNeXt with it in the
3x3; FrozenBatchNorm without epsilon), given as
`--config.init_backbone=PATH/R-50.pkl` (format "detectron_pkl").
"""

import ml_collections

from fcos_jax.configs import default
from fcos_jax.model.config import ModelConfig
from fcos_jax.model.config_dict import model_config_dict

# Schedules of the official configs: (steps, LR decay steps) at batch 16.
SCHEDULES = {"1x": (90000, (60000, 80000)), "2x": (180000, (120000, 160000))}
MULTI_SCALE = (640, 800)  # MIN_SIZE_RANGE_TRAIN: short side drawn from it.


def zoo_config(model: ModelConfig, schedule: str, multi_scale: bool,
               batch: int = 16,
               init_format: str = "detectron_pkl") -> ml_collections.ConfigDict:
  """configs/default.py with `model` and the official training recipe.

  batch: the official IMS_PER_BATCH; its BASE_LR 0.01 is the LR at that
  batch (optim.base_batch_size), scaled linearly for another global batch.
  """
  config = default.get_config()
  config.model = model_config_dict(model)
  steps, decay = SCHEDULES[schedule]
  config.num_train_steps = steps
  config.optim.decay_steps = decay
  config.global_batch_size = batch
  config.optim.base_batch_size = batch
  config.data.min_size = MULTI_SCALE if multi_scale else 800
  config.init_backbone_format = init_format
  return config
