"""Any COCO-format dataset: set the four paths and the number of classes.

  python train.py --config configs/coco_format.py --workdir runs/mine \
    --config.data.coco.train_json=/data/mine/train.json \
    --config.data.coco.train_images=/data/mine/images \
    --config.data.coco.val_json=/data/mine/val.json \
    --config.data.coco.val_images=/data/mine/images \
    --config.model.num_classes=NUM_CATEGORIES_IN_THE_JSON
"""

from fcos_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.source = "coco_format"
  return config
