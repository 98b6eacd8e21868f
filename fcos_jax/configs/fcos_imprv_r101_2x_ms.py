"""Official recipe with ResNet-101, 2x schedule, multi-scale training."""

from fcos_jax.configs import fcos_imprv_r50_2x_ms


def get_config():
  config = fcos_imprv_r50_2x_ms.get_config()
  config.model.depth = 101
  return config
