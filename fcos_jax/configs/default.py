"""Every knob of a run, commented once. Other configs import this and change
a few fields. As it stands: the official FCOS_imprv_R_50_FPN_1x recipe on
COCO 2017 from TFDS (batch 16, 90k steps, LR 0.01, steps at 60k/80k).
"""

import ml_collections

from fcos_jax.data.config import default_data_config
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict
from fcos_jax.train.optimizer import default_optim_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # The model: every field of fcos_jax.model.config.ModelConfig (architecture,
  # assignment, loss and inference), from a preset (official / paper /
  # torchvision). The backbone takes torchvision's layout (stride in the 3x3,
  # RGB ImageNet normalisation) so that torchvision's ImageNet ResNet-50, the
  # checkpoint users can get, initialises it (config.init_backbone); the head,
  # targets, losses and inference are the official ones.
  config.model = model_config_dict(model_presets.official(
      num_classes=80, stride_in_1x1=False, bn_eps=1e-5, input_bgr=False,
      input_range=1.0, pixel_mean=model_presets.IMAGENET_RGB_MEAN,
      pixel_std=model_presets.IMAGENET_RGB_STD))

  # The input pipeline (fcos_jax/data/config.py documents every field).
  config.data = default_data_config()
  config.data.source = "tfds"

  # The optimizer and LR schedule (fcos_jax/train/optimizer.py).
  config.optim = default_optim_config()

  config.global_batch_size = 16  # Images per step over all devices and hosts.
  config.num_train_steps = 90000
  config.seed = 0  # Parameter initialisation and data order.

  config.log_every_steps = 20  # Console + TensorBoard (WORKDIR/tensorboard).
  config.checkpoint_every_steps = 2500
  config.keep_checkpoints = 3  # The last N are kept, older ones deleted.
  # Also keep the N checkpoints with the best evaluation metric (among those
  # saved at an evaluation step; 0 = off).
  config.keep_best_checkpoints = 0
  config.best_checkpoint_metric = "AP"  # One of the 12 COCO numbers.
  config.async_checkpointing = True  # Write checkpoints in the background.
  # SIGTERM/SIGINT/preemption stop the run at an agreed step with a
  # checkpoint; with several processes the stop flags are compared every
  # this many steps (one small collective).
  config.stop_check_every_steps = 10
  # Resume with changed data or schedule fields (e.g. a longer schedule);
  # the architecture can never change on resume.
  config.allow_config_change = False

  config.eval_every_steps = 0  # Periodic COCO evaluation; 0 = only at the end.
  config.eval_at_end = True
  config.eval_batch_size = 8  # Global; a multiple of the device count.
  # COCOeval implementation: "pycocotools" (the reference) or
  # "faster_coco_eval" (same 12 numbers, ~20x faster on 500 images).
  config.eval_backend = "pycocotools"

  # Test-time augmentation in evaluation and prediction (fcos_jax/
  # inference/tta.py; the official FCOS TEST.BBOX_AUG): the run's own
  # resize is the first pass; each of `scales` (short sides, long side <=
  # max_size) is another; with `flip` every pass is also run mirrored. All
  # candidates are merged by class-wise NMS (model.inference.nms_iou) and
  # the best model.inference.max_detections kept. The CLIs' --tta=cheap
  # (the run's scale and 1.25x, flipped) or --tta=official (400..1200 by
  # 100, max 2000, flipped) fill these in. Off by default.
  config.tta = ml_collections.ConfigDict()
  config.tta.enabled = False
  config.tta.scales = ()  # E.g. (400, 500, 600, 700, 900, 1000, 1100, 1200).
  config.tta.max_size = 2000
  config.tta.flip = False

  # Backbone initialisation, used when the run starts (not on resume):
  # "" = random; else a torchvision ImageNet ResNet state dict (.pth, needs
  # torch) or the same saved with numpy (.npz), format "torchvision_resnet".
  # Other formats (fcos_jax/train/initial_weights.py): "torchvision_imagenet"
  # (also ResNeXt / mobilenet_v2), "detectron_pkl" (MSRA / FAIR ImageNet
  # pickles of the official configs, configs/zoo.py), "mobilenet_v2_official".
  config.init_backbone = ""
  config.init_backbone_format = "torchvision_resnet"

  # Multi-process start (jax.distributed.initialize), seconds.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialization_timeout_s = 300  # Wait for all processes.
  config.distributed.heartbeat_timeout_s = 100  # A silent peer is dead after.
  config.distributed.shutdown_timeout_s = 100  # Wait for late peers at exit.

  # A jax.profiler trace of `profile_steps` train steps after step
  # `profile_first_step` (compilation is over by then), written to
  # WORKDIR/tensorboard for TensorBoard's profile plugin; 0 = off.
  config.profile_steps = 0
  config.profile_first_step = 10

  # Persistent XLA compilation cache ("" disables it).
  config.compilation_cache_dir = "~/.cache/fcos_jax/jax_cache"
  return config
