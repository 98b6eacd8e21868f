"""The README's main command: a small FCOS on the synthetic shapes dataset,
trained and evaluated on a CPU in minutes.

  python train.py --config configs/synthetic_cpu.py --workdir /tmp/fcos_synthetic

The dataset (COCO format, made on first use under config.data.synthetic.dir)
has 256x256 images; the model is a narrow ResNet-18 (GroupNorm, trained from
scratch: there is no pretrained backbone here) with a light FPN and head.
"""

from fcos_jax.configs import default
from fcos_jax.data import synthetic
from fcos_jax.model import config as model_presets
from fcos_jax.model.config_dict import model_config_dict


def get_config():
  config = default.get_config()
  config.model = model_config_dict(model_presets.official(
      num_classes=len(synthetic.CLASSES), depth=18, width=8, freeze_at=0,
      backbone_norm="gn", fpn_channels=32, head_convs=2, gn_groups=8, input_bgr=False,
      input_range=1.0, pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.25, 0.25, 0.25),
      bn_eps=1e-5, stride_in_1x1=False,
      # 256-px images: the levels' size ranges shrink with the images.
      size_ranges=((-1.0, 32.0), (32.0, 64.0), (64.0, 128.0), (128.0, 256.0),
                   (256.0, float("inf")))))

  config.data.source = "synthetic"
  config.data.min_size = 256
  config.data.max_size = 256
  config.data.canvases = ((256, 256),)
  config.data.max_boxes = 32
  config.data.synthetic.image_size = 256

  config.global_batch_size = 16
  config.num_train_steps = 1500
  config.optim.base_lr = 0.02
  config.optim.base_batch_size = 16
  config.optim.warmup_steps = 100
  config.optim.warmup_method = "linear"
  config.optim.warmup_factor = 0.1
  config.optim.decay_steps = (1100, 1400)
  config.optim.grad_clip_norm = 10.0

  config.log_every_steps = 50
  config.checkpoint_every_steps = 500
  config.eval_batch_size = 16
  return config
