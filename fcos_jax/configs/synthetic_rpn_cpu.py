"""FCOS as a region proposal network on the synthetic shapes, on a CPU: the
main command's model, data and schedule (configs/synthetic_cpu.py) with the
`rpn` preset (one class-agnostic 'object' class, 1000 proposals per image
after NMS at IoU 0.7). evaluate.py scores it with average recall.

  python train.py --config configs/synthetic_rpn_cpu.py --workdir /tmp/fcos_rpn
"""

from fcos_jax.configs import synthetic_cpu
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict, model_config_from


def get_config():
  config = synthetic_cpu.get_config()
  detector = model_config_from(config.model)
  # The detector's architecture and assignment, with the RPN's class count
  # and proposal settings on top.
  rpn = model_presets.rpn()
  config.model = model_config_dict(detector.replace(
      num_classes=rpn.num_classes, class_agnostic=rpn.class_agnostic,
      pre_nms_topk=rpn.inference.pre_nms_topk, nms_iou=rpn.inference.nms_iou,
      max_detections=rpn.inference.max_detections))
  config.best_checkpoint_metric = "AR1000"
  return config
