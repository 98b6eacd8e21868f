"""FCOS as the region proposal network of Faster R-CNN (paper section 5),
trained alone on COCO 2017 with the official 1x recipe: R-50-FPN, the
FCOS_imprv head and assignment, one class-agnostic 'object' class, 1000
proposals per image after NMS at IoU 0.7. evaluate.py reports AR@100 /
AR@1000 (and small / medium / large) with pycocotools' proposal evaluation.

  python train.py --config configs/fcos_rpn_r50_1x.py --workdir runs/rpn_r50_1x \\
    --config.data.tfds.data_dir=/data/tensorflow_datasets \\
    --config.data.tfds.val_gt_json=/data/coco/annotations/instances_val2017.json \\
    --config.init_backbone=/data/weights/resnet50-0676ba61.pth
"""

from fcos_jax.configs import fcos_imprv_r50_1x
from fcos_jax.model.config_dict import model_config_dict, model_config_from


def get_config():
  config = fcos_imprv_r50_1x.get_config()
  model = model_config_from(config.model)
  config.model = model_config_dict(model.replace(
      num_classes=1, class_agnostic=True, pre_nms_topk=1000, nms_iou=0.7,
      max_detections=1000))
  config.best_checkpoint_metric = "AR1000"
  return config
